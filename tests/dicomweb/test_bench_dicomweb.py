"""`fhirimg bench dicomweb` starts fhirimg and Orthanc, loads one study into both and prints
both sides' figures with their ratio (a short run: the figures themselves are not judged)."""
from __future__ import annotations

import re
import shutil

from fhirimg.bench.dicomweb import run_private

from ..services import require_or_skip


def test_the_benchmark_prints_both_sides_and_their_ratio(tmp_path):
    if shutil.which("Orthanc") is None:
        require_or_skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    report = run_private(tmp_path, repeat=5, burst=20, threads=4, instances=3, rows=32)
    print(report)
    for kind in ("QIDO studies", "metadata", "instance", "frame", "rendered", "burst req/s"):
        line = next(line for line in report.splitlines() if line.startswith(kind))
        numbers = [float(n) for n in re.findall(r"\d+\.\d+|\d+", line[len(kind):])]
        assert len(numbers) >= 3 and all(n > 0 for n in numbers), line
        assert "errors" not in line, line
    assert "audit on" in report
