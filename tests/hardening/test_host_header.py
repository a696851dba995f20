"""Issue 15, item 6: without base_url, a forged Host header never reaches Location headers,
Bundle links or QIDO RetrieveURLs; a Host on allowed_hosts, or a loopback one, does."""
from __future__ import annotations

import pytest

from fhirimg.app import create_app
from fhirimg.config import load_config

from ..auth_support import ANONYMOUS
from ..factories import make_patient


@pytest.fixture
def site(database, engine):
    config = load_config(env={}, read_files=False, overrides={
        "database_url": database[0], "auth": ANONYMOUS, "allowed_hosts": ["pacs.example.org"],
        "serve": {"host": "0.0.0.0", "port": 8123}})
    return create_app(config, engine=engine).test_client()


def test_a_forged_host_is_not_used_for_location_or_links(site):
    evil = {"Host": "evil.example:666"}
    created = site.post("/fhir/Patient", json=make_patient("MRN-H"), headers=evil)
    assert created.headers["Location"].startswith("http://127.0.0.1:8123/fhir/Patient/")
    bundle = site.get("/fhir/Patient?_count=1", headers=evil).json
    assert all(link["url"].startswith("http://127.0.0.1:8123/fhir") for link in bundle["link"])
    assert "evil" not in str(bundle)
    history = site.get("/fhir/_history", headers=evil)
    assert "evil" not in history.get_data(as_text=True) and "evil" not in history.headers["X-Next-Poll"]


def test_an_allowed_or_loopback_host_is_used(site):
    allowed = site.post("/fhir/Patient", json=make_patient("MRN-A"), headers={"Host": "pacs.example.org"})
    assert allowed.headers["Location"].startswith("http://pacs.example.org/fhir/Patient/")
    local = site.post("/fhir/Patient", json=make_patient("MRN-L"), headers={"Host": "localhost:8123"})
    assert local.headers["Location"].startswith("http://localhost:8123/fhir/Patient/")


def test_qido_retrieve_urls_ignore_a_forged_host(site, engine):
    from fhirimg.api import dicomweb
    with site.application.test_request_context("/dicom-web/studies", headers={"Host": "evil.example:666"}):
        assert dicomweb.own_base() == "http://127.0.0.1:8123/dicom-web"


def test_a_loopback_host_without_a_port_gets_the_port_the_request_arrived_on(site):
    """Issue 21: `Host: 127.0.0.1` to a server on 8123 gave RetrieveURLs without the port."""
    from fhirimg.api import dicomweb
    environ = {"SERVER_PORT": "8123"}  # what the dev server reports; gunicorn: its socket
    with site.application.test_request_context("/dicom-web/studies", headers={"Host": "127.0.0.1"},
                                               environ_overrides=environ):
        assert dicomweb.own_base() == "http://127.0.0.1:8123/dicom-web"

    class Socket:
        def getsockname(self):
            return ("127.0.0.1", 8124)
    with site.application.test_request_context("/dicom-web/studies", headers={"Host": "localhost"},
                                               environ_base={"gunicorn.socket": Socket()}):
        assert dicomweb.own_base() == "http://localhost:8124/dicom-web"


def test_a_configured_base_url_is_the_root_of_retrieve_urls(database, engine):
    from fhirimg.api import dicomweb
    config = load_config(env={}, read_files=False, overrides={
        "database_url": database[0], "auth": ANONYMOUS, "base_url": "https://imaging.example.org/fhir"})
    app = create_app(config, engine=engine)
    with app.test_request_context("/dicom-web/studies", headers={"Host": "127.0.0.1:9999"}):
        assert dicomweb.own_base() == "https://imaging.example.org/dicom-web"


def test_the_root_of_a_portless_loopback_host_is_never_cached_across_sockets(site):
    """public_root is cached per Host; a port-less loopback Host takes the arrival socket's
    port, which two requests with the same Host may differ in."""
    from fhirimg.api import dicomweb

    class Socket:
        def __init__(self, port):
            self.port = port

        def getsockname(self):
            return ("127.0.0.1", self.port)
    for port in (8124, 8125, 8124):
        with site.application.test_request_context("/dicom-web/studies", headers={"Host": "localhost"},
                                                   environ_base={"gunicorn.socket": Socket(port)}):
            assert dicomweb.own_base() == f"http://localhost:{port}/dicom-web"


def test_the_root_cache_stops_growing_at_its_bound(site):
    from fhirimg.api import dicomweb
    from fhirimg.api.negotiation import ROOTS_CACHED
    for n in range(ROOTS_CACHED + 10):  # loopback names with distinct ports: each its own key
        with site.application.test_request_context("/dicom-web/studies", headers={"Host": f"localhost:{9000 + n}"}):
            assert dicomweb.own_base() == f"http://localhost:{9000 + n}/dicom-web"
    assert len(site.application.extensions["fhirimg.public_roots"]) == ROOTS_CACHED
    with site.application.test_request_context("/dicom-web/studies", headers={"Host": "pacs.example.org"}):
        assert dicomweb.own_base() == "http://pacs.example.org/dicom-web"  # answered, not cached
    assert len(site.application.extensions["fhirimg.public_roots"]) == ROOTS_CACHED


def test_forged_hosts_take_no_place_in_the_root_cache(site):
    from fhirimg.api import dicomweb
    for n in range(10):
        with site.application.test_request_context("/dicom-web/studies", headers={"Host": f"evil{n}.example"}):
            assert dicomweb.own_base() == "http://127.0.0.1:8123/dicom-web"
    assert site.application.extensions.get("fhirimg.public_roots", {}) == {}
