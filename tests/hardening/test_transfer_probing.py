"""Issue 15, item 11: $retrieve is not a port scanner (a client reads a category, not
"connection refused" versus "answered HTTP 404" with addresses), a listed loopback
host:port is allowed without allow_loopback, and [::1] is loopback like 127.0.0.1."""
from __future__ import annotations

import socket

import pytest

from fhirimg.transfer.netpolicy import HostPolicy, HostRefused
from fhirimg.transfer.tasks import run_retrieve

from ..services import free_port
from ..transfer.site import make_site


def test_a_listed_loopback_host_and_port_is_allowed_without_allow_loopback():
    policy = HostPolicy(["127.0.0.1:18242"], allow_loopback=False)
    assert policy.check_url("http://127.0.0.1:18242/dicom-web")[1:] == ("127.0.0.1", 18242)
    with pytest.raises(HostRefused):
        policy.check_url("http://127.0.0.1:18243/dicom-web")  # another port: not listed
    with pytest.raises(HostRefused):
        HostPolicy(["127.0.0.1"], allow_loopback=False).check_url("http://127.0.0.1:18242/")  # no port: no


def test_ipv6_loopback_is_loopback():
    assert HostPolicy(allow_loopback=True).check_url("http://[::1]:8042/dicom-web")[1] == "::1"
    with pytest.raises(HostRefused, match="loopback"):
        HostPolicy(["[::1]"], allow_loopback=False).check_url("http://[::1]:8042/dicom-web")


def test_a_listed_loopback_port_is_also_allowed_when_the_socket_connects():
    policy = HostPolicy(["127.0.0.1:18242"], allow_loopback=False)
    policy.check_connected("127.0.0.1", "127.0.0.1", 18242)
    with pytest.raises(HostRefused):
        policy.check_connected("127.0.0.1", "127.0.0.1", 18243)


def closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


@pytest.mark.timeout(120)
def test_a_refused_connection_tells_the_client_a_category_only(tmp_path):
    site = make_site(tmp_path, max_retries=0)
    port = closed_port()
    study_id = site.add_study(f"http://127.0.0.1:{port}/dicom-web", "1.2.826.0.1.3680043.8.498.1")
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "failed"
    reason = site.task(task_id)["statusReason"]["concept"]["text"]
    assert reason == "the source could not be reached (refused)"
    assert str(port) not in reason and "Errno" not in reason


def test_a_host_refused_names_the_host_given_but_not_what_it_resolved_to(tmp_path):
    site = make_site(tmp_path, allow_loopback=False, allowed_hosts=["localhost"])
    study_id = site.add_study("http://localhost:9/dicom-web", "1.2.826.0.1.3680043.8.498.2")
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "failed"
    reason = site.task(task_id)["statusReason"]["concept"]["text"]
    assert "localhost" in reason and "allow-list" in reason and "127.0.0.1" not in reason
