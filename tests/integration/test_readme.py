"""The README's curl examples, run in order against `fhirimg serve`: the documentation
cannot drift from what the server does."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from ..services import fhirimg_command
from .test_serve import Served

README = Path(__file__).resolve().parents[2] / "README.rst"
SECTION = ("Every interaction with curl", "Loading files")

# One status per curl command of the section, in order.
EXPECTED = [200,            # metadata
            201,            # create
            201,            # update as create
            200, 304,       # read, conditional read
            200,            # update with If-Match
            200,            # vread
            200,            # patch
            200,            # history
            200, 200,       # search by identifier, by _id
            200,            # conditional create that matches
            200,            # conditional update
            200,            # conditional delete
            200, 410, 200]  # delete, read after delete, vread of an old version


def curl_blocks(text: str, section: tuple[str, str] = SECTION) -> list[str]:
    """The `.. code-block:: bash` bodies between the two `section` headings."""
    start = text.index("\n" + section[0])
    end = text.index("\n" + section[1], start)
    lines = text[start:end].splitlines()
    blocks, current = [], None
    for line in lines:
        if line.strip() == ".. code-block:: bash":
            current = []
            blocks.append(current)
        elif current is not None and (line.startswith("    ") or not line.strip()):
            current.append(line[4:])
        elif current is not None:
            current = None
    return ["\n".join(b).strip() for b in blocks]


def test_the_readme_shows_every_interaction():
    script = "\n".join(curl_blocks(README.read_text()))
    for fragment in ("/metadata", "-X POST", "-X PUT", "If-Match", "If-None-Match", "_history/1", "-X PATCH",
                     "If-None-Exist", "Patient?identifier=", "-X DELETE", "/_history\""):
        assert fragment in script, fragment


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = Served(tmp_path_factory.mktemp("readme"), anonymous=False)  # smart, as `make run`
    yield server
    server.stop()


def fhirimg(served, *args: str) -> str:
    result = subprocess.run(fhirimg_command() + list(args), cwd=served.workdir, env=served.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def token(served) -> str:
    """As the README's access-control section: a key, a registered client, a token."""
    jwks = json.loads(fhirimg(served, "clients", "keygen", "readme.pem"))
    (served.workdir / "readme.jwks").write_text(json.dumps(jwks))
    fhirimg(served, "clients", "add", "readme", "--jwks", "readme.jwks", "--scopes", "system/*.cruds")
    kid = jwks["keys"][0]["kid"]
    return fhirimg(served, "token", "--client-id", "readme", "--key", "readme.pem", "--kid", kid,
                   "--base", served.base).strip()


def test_every_curl_example_answers_as_documented(served, token):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    commands = curl_blocks(README.read_text())
    # Each curl prints only its status code, one per line.
    script = "curl() { command curl -sS -o /dev/null -w '%{http_code}\\n' \"$@\"; }\nset -e\n" + "\n".join(commands)
    result = subprocess.run(["bash", "-c", script], env={**served.env, "FHIR": served.base, "TOKEN": token},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [int(code) for code in result.stdout.split()] == EXPECTED
    assert len(re.findall(r"^\s*curl ", "\n".join(commands), re.M)) == len(EXPECTED)
    without = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{served.base}/Patient/anna"],
                             capture_output=True, text=True, timeout=30)
    assert without.stdout == "401"  # and nothing is served without the token
    auth = {"Authorization": f"Bearer {token}"}
    updated = requests.get(f"{served.base}/Patient/anna/_history/2", headers=auth).json()
    assert updated["name"][0]["given"] == ["Anna", "Maria"]
    found = requests.get(f"{served.base}/Patient", params={"identifier": "http://hospital.example.org/mrn|12345"},
                         headers=auth)
    assert found.json().get("entry", []) == []  # the conditional delete removed the only match


AUDIT_SECTION = ("Reading it", "Never silently changed")


def test_the_audit_trail_examples_answer_and_find_what_the_interactions_did(served, token):
    """Runs after the interactions above (same server): Anna's trail holds their events."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    commands = curl_blocks(README.read_text(), AUDIT_SECTION)
    assert len(commands) == 1 and commands[0].count("curl ") == 4
    env = {**served.env, "FHIR": served.base, "TOKEN": token}
    script = "set -e\n" + commands[0].replace("curl ", "curl -sS -w '\\n' ")
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    trail, readers, refusals, verified = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert trail["resourceType"] == "Bundle" and len(trail["entry"]) >= 10  # the interactions on anna
    codes = [e["resource"]["code"]["coding"][0]["code"] for e in trail["entry"]]
    assert {"create", "update", "patch", "read", "delete"} <= set(codes)
    assert len(readers["entry"]) >= 2 and all(e["resource"]["action"] == "R" for e in readers["entry"])
    assert refusals["resourceType"] == "Bundle"
    assert verified["parameter"][0] == {"name": "result", "valueBoolean": True}


SUBSCRIPTION_SECTION = ("Notifications: FHIR R5 Subscriptions", ".. END readme-subscriptions")


def test_the_subscription_example_is_stored_and_its_operations_answer(served, token):
    """The "new CT for patient X" example as written, its endpoint swapped for a loopback
    one (the example's host does not resolve here), then its $status and $events."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    create, operations = curl_blocks(README.read_text(), SUBSCRIPTION_SECTION)
    assert "filterBy" in create and "DCM|CT" in create and "Patient/anna" in create
    create = re.sub(r"^HOOK=.*$", "HOOK=http://127.0.0.1:9/hook", create, flags=re.M).replace(" -i ", " -sS ")
    env = {**served.env, "FHIR": served.base, "TOKEN": token}
    made = subprocess.run(["bash", "-c", "set -e\n" + create], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    subscription = json.loads(made.stdout)
    assert subscription["resourceType"] == "Subscription" and subscription["status"] == "requested", subscription
    script = "set -e\n" + operations.replace("curl ", "curl -sS -w '\\n' ")
    ran = subprocess.run(["bash", "-c", script], env={**env, "SUB": subscription["id"]}, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    status, events = [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]
    assert status["type"] == "searchset"
    assert status["entry"][0]["resource"]["type"] == "query-status"
    assert events["entry"][0]["resource"]["type"] == "query-event"
