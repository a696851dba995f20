"""``fhirimg bench retrieve`` runs end to end on a tiny synthetic study (its figures are not asserted)."""
from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner

from fhirimg.cli import main

from ..services import require_or_skip


def test_bench_retrieve_prints_steps_baselines_and_ratios():
    if shutil.which("Orthanc") is None:
        require_or_skip("Orthanc is not installed")
    result = CliRunner().invoke(main, ["bench", "retrieve", "--series", "2", "--instances", "3", "--rows", "32",
                                       "--repeat", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "study: 6 instances" in out
    for label in ("1 QIDO-RS", "2 series metadata", "3 series retrieve", "time to first instance",
                  "worker peak RSS", "GET /studies/{uid}", "sequential per-instance GETs",
                  "write+fsync same bytes", "Orthanc peer pulling it (DICOMweb)",
                  "its time to first instance stored"):
        assert label in out
    ratio = re.search(r"GET /studies/\{uid\}, count bytes\s+[\d.]+\s+[\d.]+\s+([\d.]+)", out)
    assert ratio and float(ratio.group(1)) > 0


@pytest.mark.parametrize("args", [["--source", "http://127.0.0.1:9/dicom-web"], ["--study", "1.2.3"]])
def test_source_and_study_go_together(args):
    result = CliRunner().invoke(main, ["bench", "retrieve", *args])
    assert result.exit_code != 0 and "go together" in result.output
