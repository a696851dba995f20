"""`fhirimg bench push` runs end to end on both doors, against real Orthanc and storescu, and
prints the figures it claims. Not timed here: the figures are for the operator."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ..services import fhirimg_command, require_or_skip

ROW = re.compile(r"^(?P<label>.+?)\s+(?P<seconds>\d+\.\d+)\s+(?P<mbs>\d+\.\d+)\s+(?P<per_s>\d+\.\d+)\s+(?P<ratio>\d+\.\d+)$")


@pytest.mark.parametrize("source, peer", [("stow", "Orthanc POST /instances"), ("cstore", "Orthanc C-STORE (storescu)")])
def test_bench_push_prints_fhirimg_next_to_orthanc(source, peer, tmp_path):
    for tool in ("Orthanc", "storescu"):
        if shutil.which(tool) is None:
            require_or_skip(f"{tool} is not installed (apt-get install orthanc orthanc-dicomweb dcmtk)")
    result = subprocess.run(fhirimg_command() + ["bench", "push", "--source", source, "--instances", "12",
                                                 "--rows", "64", "--repeat", "1", "--batch", "5"],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {m["label"].strip(): m for m in map(ROW.match, result.stdout.splitlines()) if m}
    ours = rows["fhirimg STOW-RS" if source == "stow" else "fhirimg C-STORE (storescu)"]
    assert float(ours["ratio"]) == 1.0 and float(ours["per_s"]) > 0
    assert float(rows[peer]["per_s"]) > 0 and "write+fsync same bytes (8 threads)" in rows
    assert "push: 12 instances" in result.stdout and "paired ratios" in result.stdout
