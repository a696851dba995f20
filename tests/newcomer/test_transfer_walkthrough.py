"""The README's transfer walkthrough, run line by line as a newcomer would type it: the demo
archive, `fhirimg run`, a token, `fhirimg load`, `$retrieve`, the report, the study back over
fhirimg's own DICOMweb. The lines are read from README.rst, so the test breaks if it drifts.

Two changes to what a newcomer types, both mechanical: `127.0.0.1:8080` becomes the test
server's free port, and the `transfer-report` line is repeated until the Task has finished
(the README says "again until status=completed").
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..integration.test_run import Running
from ..services import require_or_skip

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.rst"
MARKER = ".. The code block below is run line by line by tests/newcomer/test_transfer_walkthrough.py"
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

pytestmark = pytest.mark.slow


def walkthrough(text: str) -> list[str]:
    """The commands of the code block after MARKER, continuation lines joined."""
    lines = text[text.index(".. code-block:: bash", text.index(MARKER)):].splitlines()[1:]
    commands, pending = [], ""
    for line in lines:
        if not line.strip():
            if commands or pending:
                break
            continue
        if not line.startswith("    "):
            break
        text_line = pending + line.strip()
        if text_line.endswith("\\"):
            pending = text_line[:-1] + " "
        else:
            commands.append(text_line)
            pending = ""
    return commands


def test_the_walkthrough_is_where_the_test_looks_for_it():
    commands = walkthrough(README.read_text())
    assert commands[0].startswith(". .venv/bin/activate")
    assert any("archive.py start" in c for c in commands) and any("$retrieve" in c for c in commands)
    assert any(c.startswith("fhirimg transfer-report") for c in commands)
    assert not any(".venv/bin/fhirimg" in c for c in commands)


def as_script(commands: list[str], port: int) -> str:
    """One bash script of the README's lines; the report line is polled until the Task ends."""
    out = ["set -eo pipefail"]
    for command in commands:
        command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        if command.startswith("fhirimg transfer-report"):
            out += ["report() {", command, "}",
                    "for attempt in $(seq 240); do",
                    "  REPORT=$(report)",
                    '  case "$REPORT" in *status=completed*|*status=failed*|*status=cancelled*) break;; esac',
                    "  sleep 0.5",
                    "done",
                    'echo "$REPORT" > report.txt']
        else:
            out.append(command)
    return "\n".join(out) + "\n"


def skip_without_tools() -> None:
    orthanc = shutil.which("Orthanc") or (os.access("/usr/sbin/Orthanc", os.X_OK) and "/usr/sbin/Orthanc")
    if not orthanc or not ORTHANC_PLUGIN.exists():
        require_or_skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    if shutil.which("curl") is None:
        require_or_skip("curl is not installed")
    if sys.prefix == sys.base_prefix:
        require_or_skip("the tests do not run in a virtual environment, so there is no .venv to activate")


def newcomer_directory(tmp_path: Path) -> Path:
    """A checkout as the README sees it: .venv and examples/ (linked), nothing else."""
    workdir = tmp_path / "fhirimg"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    (workdir / "examples").symlink_to(REPO / "examples")
    return workdir


def stop(running: Running) -> None:
    subprocess.run([sys.executable, "examples/demo-archive/archive.py", "stop"], cwd=running.workdir,
                   capture_output=True, timeout=60)
    if running.process.poll() is None:
        os.killpg(running.process.pid, signal.SIGINT)  # Ctrl-C, as in the terminal of `make run`
        try:
            running.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
    running.kill_everything()


def test_the_readme_transfer_walkthrough_fetches_the_demo_study(tmp_path):
    skip_without_tools()
    running = Running(newcomer_directory(tmp_path))  # `make run` is `.venv/bin/fhirimg run`
    try:
        script = as_script(walkthrough(README.read_text()), running.port)
        (running.workdir / "walkthrough.sh").write_text(script)
        result = subprocess.run(["bash", "walkthrough.sh"], cwd=running.workdir, env=running.env,
                                capture_output=True, text=True, timeout=300)
        log = (running.workdir / "fhirimg.log").read_text(errors="replace")[-3000:]
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n--- fhirimg.log\n{log}"
        assert "3 created" in result.stdout, result.stdout
        task = json.loads((running.workdir / "task.json").read_text())
        assert task["resourceType"] == "Task" and task["focus"]["reference"] == "ImagingStudy/demo-study"
        report = (running.workdir / "report.txt").read_text()
        assert "status=completed" in report and "6/6 stored" in report, report + log
        multipart = (running.workdir / "study.multipart").read_bytes()
        assert multipart.count(b"Content-Type: application/dicom") == 6
        assert multipart.count(b"DICM") == 6  # six Part-10 files, as the archive holds them
    finally:
        stop(running)
    assert not (running.workdir / "var" / "demo-archive" / "orthanc.state.json").exists()
