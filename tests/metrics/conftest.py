"""Apps with a [metrics] section of the test's choosing, and reading /metrics back."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

import fhirimg.metrics  # noqa: F401  (registers the [metrics] section before load_config)
from fhirimg.app import create_app
from fhirimg.config import load_config

from ..auth_support import ANONYMOUS

TOKEN_VARIABLE = "METRICS_TEST_TOKEN"  # not FHIRIMG_*: those are settings
TOKEN = "s3cret-metrics-token-for-tests-0123456789"


@pytest.fixture
def make_app(database, engine, tmp_path):
    """create_app with `metrics` as the [metrics] section; auth.mode "smart" unless
    `anonymous`; var_dir (and so the blob store) under the test's directory."""
    def make(metrics: dict | None = None, anonymous: bool = False, app_engine=None, **overrides):
        settings = {"database_url": database[0], "var_dir": str(tmp_path / "var"), "metrics": metrics or {},
                    **({"auth": ANONYMOUS} if anonymous else {}), **overrides}
        return create_app(load_config(env={}, read_files=False, overrides=settings), engine=app_engine or engine)
    return make


def samples(body: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(body: str, name: str, **labels) -> float | None:
    return samples(body).get((name, tuple(sorted(labels.items()))))


def scrape(test_client, **headers) -> str:
    response = test_client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)
