"""The [replicate] section: validated at start-up, errors name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from fhirimg.config import ConfigError, load_config
from fhirimg.replicate.settings import configured_links, parse_duration

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "replicate.example.toml"


def load(replicate: dict) -> dict:
    return load_config(env={}, read_files=False, overrides={"replicate": replicate})


def test_the_example_configuration_is_valid():
    links = configured_links(load_config(EXAMPLE, env={}))
    assert [(l.name, l.direction, l.interval) for l in links] == [("from-hospital-a", "pull", 30.0),
                                                                   ("to-region", "push", 60.0)]
    assert links[0].conflict_rule == "source-wins"


@pytest.mark.parametrize("link, says", [
    ({"name": "x", "direction": "sideways", "url": "http://a/fhir"}, "direction"),
    ({"name": "x", "direction": "pull", "url": "ftp://a/fhir"}, "url"),
    ({"name": "x", "direction": "pull", "url": "http://a/fhir/"}, "url"),
    ({"name": "x", "direction": "pull", "url": "http://a/fhir", "interval": "soon"}, "interval"),
    ({"name": "x", "direction": "pull", "url": "http://a/fhir", "types": ["Observation"]}, "types"),
    ({"name": "x", "direction": "pull", "url": "http://a/fhir", "auth": "bearer"}, "auth"),
    ({"name": "x", "direction": "pull", "url": "http://a/fhir", "token_env": "lower"}, "token_env"),
    ({"name": "x", "direction": "pull", "url": "http://a/fhir", "password": "secret"}, "password"),
])
def test_bad_links_stop_start_up_naming_the_key(link, says):
    with pytest.raises(ConfigError, match=says):
        load({"links": [link]})


def test_link_names_are_unique():
    link = {"name": "x", "direction": "pull", "url": "http://a/fhir"}
    with pytest.raises(ConfigError, match="unique"):
        load({"links": [link, dict(link, direction="push")]})


def test_durations():
    assert [parse_duration(v) for v in ("30s", "5m", "1h", "250ms", "2", 3)] == [30, 300, 3600, 0.25, 2, 3]
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
