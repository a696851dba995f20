"""Two fhirimg sites in smart mode replicating pull and push to each other, each registered
as the other's SMART Backend Services client: no anonymous access anywhere."""
from __future__ import annotations

import requests

from fhirimg.auth.cli import write_private_key

from ..auth_support import ClientKey, register, token_form
from ..factories import make_patient
from ..replicate.state import all_versions, current_state

SMART = {"mode": "smart", "allow_anonymous": False}


def backend_link(site, direction: str, peer, key_file, key: ClientKey, client_id: str, scope: str):
    return site.link(direction, peer, auth="smart-backend", client_id=client_id, kid=key.kid,
                     private_key_file=str(key_file), scope=scope)


def test_two_smart_sites_pull_and_push_each_other_with_backend_tokens(make_site, tmp_path):
    a, b = make_site("a", auth=SMART), make_site("b", auth=SMART)
    assert requests.get(f"{a.url}/_history", timeout=10).status_code == 401  # nobody gets in bare
    assert requests.get(f"{b.url}/_history", timeout=10).status_code == 401
    key_b, key_a = ClientKey("ES384"), ClientKey("RS384")
    write_private_key(tmp_path / "b.pem", key_b.private)
    write_private_key(tmp_path / "a.pem", key_a.private)
    register(a.engine, "site-b", "system/*.rs", key=key_b)        # b reads a's feed
    register(b.engine, "site-a", "system/*.cruds", key=key_a)     # a writes to b
    register(a.engine, "writer", "system/*.cruds", key=key_a)
    token_url = a.url.rsplit("/fhir", 1)[0] + "/auth/token"
    token = requests.post(token_url, data=token_form(key_a, "writer", "system/*.cruds", token_url),
                          timeout=10).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    for _ in range(5):
        assert requests.post(f"{a.url}/Patient", json=make_patient(), headers=auth, timeout=10).status_code == 201
    pull = backend_link(b, "pull", a, tmp_path / "b.pem", key_b, "site-b", "system/*.rs")
    assert b.run(pull).applied > 0
    assert current_state(b.engine) == current_state(a.engine)
    # and the other way: a pushes what it gets next
    assert requests.post(f"{a.url}/Patient", json=make_patient(), headers=auth, timeout=10).status_code == 201
    push = backend_link(a, "push", b, tmp_path / "a.pem", key_a, "site-a", "system/*.cruds")
    assert a.run(push).sent > 0
    assert current_state(b.engine) == current_state(a.engine)
    assert all_versions(b.engine)
