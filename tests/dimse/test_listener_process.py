"""The listener as a process: `fhirimg dicom-listener` (foreground, graceful on SIGTERM) and
`fhirimg run` with ``[dicom] listener = true``."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ..services import (
    fhirimg_env,
    free_port,
    start_fhirimg,
    wait_for_http,
    wait_for_port,
)
from ..transfer.dicomfactory import make_study
from .test_listener import AE_TITLE, require_dcmtk, write_files

pytestmark = pytest.mark.slow


def write_config(workdir: Path, dicom_port: int, listener: bool = False) -> Path:
    var = workdir / "var"
    path = workdir / "fhirimg.toml"
    path.write_text(f'database_url = "sqlite:///{var / "fhirimg.db"}"\nvar_dir = "{var}"\n\n'
                    '[worker]\nembedded = false\n\n'  # not what this is about (and slow to stop)
                    f'[dicom]\nlistener = {"true" if listener else "false"}\nport = {dicom_port}\n'
                    'callers = [{ ae_title = "STORESCU", hosts = ["127.0.0.1"] },\n'
                    '           { ae_title = "ECHOSCU", hosts = ["127.0.0.1"] }]\n')
    return path


def stored_count(workdir: Path) -> int:
    with sqlite3.connect(workdir / "var" / "fhirimg.db") as conn:
        return conn.execute("SELECT count(*) FROM dicom_instance").fetchone()[0]


def echo(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aec", AE_TITLE, "127.0.0.1", str(port)], check=False, capture_output=True, text=True,
                          timeout=30)


def stop(process: subprocess.Popen, workdir: Path, signum: int = signal.SIGTERM) -> int:
    process.send_signal(signum)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError((workdir / "fhirimg.log").read_text()[-3000:]) from None


def test_dicom_listener_stores_and_stops_gracefully_on_sigterm(tmp_path):
    require_dcmtk()
    port = free_port()
    config = write_config(tmp_path, port)
    process = start_fhirimg(["dicom-listener", "--config", str(config)], tmp_path, fhirimg_env(anonymous=True))
    try:
        wait_for_port(port, timeout=60)
        assert echo(port).returncode == 0
        study = make_study(series=1, instances=5, rows=16, columns=16, seed=70)
        sent = subprocess.run(["storescu", "-aec", AE_TITLE, "127.0.0.1", str(port),
                               *write_files(tmp_path / "sent", study.instances)], check=False, capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stderr
    finally:
        status = stop(process, tmp_path)
    assert status == 0, (tmp_path / "fhirimg.log").read_text()[-3000:]
    assert stored_count(tmp_path) == 5  # every instance answered is stored before the process ends
    assert not list((tmp_path / "var" / "blobs" / ".dimse-inbox").glob("*"))


def test_fhirimg_run_starts_the_listener_when_configured(tmp_path):
    require_dcmtk()
    port, http_port = free_port(), free_port()
    config = write_config(tmp_path, port, listener=True)
    env = fhirimg_env(anonymous=True, serve__port=http_port, serve__workers=1)
    process = start_fhirimg(["run", "--config", str(config)], tmp_path, env, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{http_port}/fhir/metadata", process, timeout=90, log=tmp_path / "fhirimg.log")
        wait_for_port(port, timeout=60)
        assert echo(port).returncode == 0
    finally:
        assert stop(process, tmp_path, signal.SIGINT) == 0
    assert echo(port).returncode != 0  # stopped with the rest
