"""The [metrics] section as shipped, and what `fhirimg serve` hands gunicorn."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fhirimg.metrics.multiprocess import gunicorn_options
from fhirimg.metrics.settings import MetricsSchema

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "fhirimg.toml"


def test_the_commented_section_in_the_shipped_file_is_the_defaults():
    lines = SHIPPED.read_text().splitlines()
    start = lines.index("# [metrics]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    assert tomllib.loads("\n".join(block)) == {"metrics": MetricsSchema().load({})}


GUNICORN_OPTIONS = """
import json, os, sys
from fhirimg.metrics.multiprocess import gunicorn_options
options = gunicorn_options({"sections": {"metrics": {"listen": sys.argv[1], "token_env": "", "readiness_timeout": 2.0,
                                                      "cache_seconds": 60.0}}},
                           {"port": 8080}, {"bind": "0.0.0.0:8080", "workers": 2})
from prometheus_client import values
print(json.dumps({"bind": options["bind"], "hooks": sorted(k for k in options if callable(options[k])),
                  "directory": os.environ["PROMETHEUS_MULTIPROC_DIR"], "multiprocess": values.ValueClass._multiprocess}))
"""


def run_gunicorn_options(listen: str, tmp_path) -> subprocess.CompletedProcess:
    """In a fresh interpreter, as in the gunicorn master: prometheus_client not imported yet."""
    return subprocess.run([sys.executable, "-c", GUNICORN_OPTIONS, listen], capture_output=True, text=True,
                          env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)


def test_serve_binds_the_listener_and_sets_up_multiprocess_mode_before_the_app(tmp_path):
    done = run_gunicorn_options("127.0.0.1:9464", tmp_path)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["bind"] == ["0.0.0.0:8080", "127.0.0.1:9464"]
    assert answer["hooks"] == ["child_exit", "on_exit", "when_ready"]
    assert answer["multiprocess"] is True and Path(answer["directory"]).parent == tmp_path


def test_a_listener_on_the_api_port_is_refused_and_leaves_nothing_behind(tmp_path):
    done = run_gunicorn_options("127.0.0.1:8080", tmp_path)
    assert done.returncode != 0 and "the API's own (serve.port)" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_multiprocess_mode_cannot_be_set_up_after_prometheus_client_was_imported():
    import prometheus_client  # noqa: F401  (as if the app had been built first)
    with pytest.raises(RuntimeError, match="before create_app"):
        gunicorn_options({}, {"port": 8080}, {"bind": "127.0.0.1:8080"})
