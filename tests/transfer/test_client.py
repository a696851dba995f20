"""HTTP session policy: allow-list, redirects, retries, Retry-After, limits, credentials."""
from __future__ import annotations

import socket
import threading
import time
from email.utils import formatdate

import pytest
import requests
from .scripted_server import ScriptedServer

from fhirimg.transfer.client import (ClientSettings, EndpointLimits, SourceError, TransferClient,
                                     build_url, parse_retry_after)
from fhirimg.transfer.netpolicy import HostPolicy, HostRefused


class FakeSleep:
    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds):
        self.calls.append(seconds)


def client_for(settings=None, **kw) -> TransferClient:
    settings = settings or ClientSettings(allow_loopback=True)
    return TransferClient(settings, **kw)


def fixed_resolver(*addresses):
    def resolve(host, port, type=0):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port)) for a in addresses]
    return resolve


@pytest.mark.parametrize("address", ["169.254.169.254", "169.254.10.1", "fe80::1", "fd00:ec2::254",
                                     "0.0.0.0", "224.0.0.1", "::ffff:169.254.169.254"])
def test_link_local_and_metadata_addresses_are_refused_even_when_listed(address):
    policy = HostPolicy(["pacs.example.org"], allow_loopback=True, resolve=fixed_resolver(address))
    with pytest.raises(HostRefused):
        policy.check_url("http://pacs.example.org/dicom-web")


def test_metadata_hostname_is_refused_even_when_listed():
    policy = HostPolicy(["metadata.google.internal"], resolve=fixed_resolver("10.0.0.1"))
    with pytest.raises(HostRefused):
        policy.check_url("http://metadata.google.internal/computeMetadata/v1/")


def test_host_outside_allow_list_is_refused():
    policy = HostPolicy(["pacs.example.org"], resolve=fixed_resolver("10.1.2.3"))
    with pytest.raises(HostRefused, match="allow-list"):
        policy.check_url("http://evil.example.com/dicom-web")


def test_every_resolved_address_is_checked():
    policy = HostPolicy(["pacs.example.org"], resolve=fixed_resolver("10.1.2.3", "169.254.169.254"))
    with pytest.raises(HostRefused):
        policy.check_url("https://pacs.example.org/dicom-web")


def test_listed_host_with_private_address_and_wildcard_and_port_entries_are_allowed():
    policy = HostPolicy(["*.hospital.example", "pacs.example.org:8443"], resolve=fixed_resolver("10.1.2.3"))
    assert policy.check_url("https://a.hospital.example/dicom-web")[1] == "a.hospital.example"
    assert policy.check_url("https://pacs.example.org:8443/x")[2] == 8443
    with pytest.raises(HostRefused):
        policy.check_url("https://pacs.example.org/x")


def test_loopback_is_refused_unless_allowed():
    with pytest.raises(HostRefused):
        HostPolicy([], allow_loopback=False).check_url("http://127.0.0.1:8042/dicom-web")
    listed_but_loopback = HostPolicy(["pacs.example.org"], resolve=fixed_resolver("127.0.0.1"))
    with pytest.raises(HostRefused, match="loopback"):
        listed_but_loopback.check_url("http://pacs.example.org/")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "http://user:pw@127.0.0.1/",
                                 "http:///nohost"])
def test_non_http_urls_and_urls_with_credentials_are_refused(url):
    with pytest.raises(HostRefused):
        HostPolicy([], allow_loopback=True).check_url(url)


def test_connected_peer_is_checked_again_after_dns():
    # The name passes the pre-check (resolver says 10.x) but the socket lands on loopback.
    policy = HostPolicy(["127.0.0.1"], allow_loopback=False, resolve=fixed_resolver("10.9.9.9"))
    with ScriptedServer([(200, {}, b"[]")]) as server:
        client = TransferClient(ClientSettings(), policy=policy)
        with pytest.raises(HostRefused):
            client.get_json(server.url + "/studies")
        assert server.requests == []


def test_retry_after_seconds_is_honoured_on_429_and_503():
    sleep = FakeSleep()
    script = [(429, {"Retry-After": "7"}, b""), (503, {"Retry-After": "3"}, b""), (200, {}, b"[1]")]
    with ScriptedServer(script) as server:
        assert client_for(sleep=sleep).get_json(server.url + "/x") == [1]
    assert sleep.calls == [7.0, 3.0]


def test_retry_after_is_capped():
    sleep = FakeSleep()
    settings = ClientSettings(allow_loopback=True, retry_after_max=5)
    with ScriptedServer([(503, {"Retry-After": "3600"}, b""), (200, {}, b"[]")]) as server:
        client_for(settings, sleep=sleep).get_json(server.url + "/x")
    assert sleep.calls == [5]


def test_retry_after_http_date_is_parsed():
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after("garbage", now) is None
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0


def test_5xx_is_retried_with_jittered_exponential_backoff():
    sleep = FakeSleep()
    settings = ClientSettings(allow_loopback=True, backoff_base=1.0, backoff_max=3.0, max_retries=3)
    with ScriptedServer([(500, {}, b""), (502, {}, b""), (504, {}, b""), (200, {}, b"[]")]) as server:
        client_for(settings, sleep=sleep, rng=lambda: 1.0).get_json(server.url + "/x")
    assert sleep.calls == [1.0, 2.0, 3.0]


def test_retries_give_up_after_the_limit_with_the_status():
    settings = ClientSettings(allow_loopback=True, max_retries=2)
    with ScriptedServer([(503, {}, b"")]) as server:
        with pytest.raises(SourceError) as info:
            client_for(settings, sleep=FakeSleep()).get_json(server.url + "/x")
        assert len(server.requests) == 3
    assert info.value.status == 503


def test_4xx_is_not_retried():
    with ScriptedServer([(404, {}, b"")]) as server:
        with pytest.raises(SourceError) as info:
            client_for(sleep=FakeSleep()).get_json(server.url + "/x")
        assert len(server.requests) == 1 and info.value.status == 404


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleep = FakeSleep()
    settings = ClientSettings(allow_loopback=True, max_retries=2)
    with pytest.raises(SourceError, match="connection"):
        client_for(settings, sleep=sleep).get_json(f"http://127.0.0.1:{port}/x")
    assert len(sleep.calls) == 2


def test_redirect_to_another_origin_is_not_followed():
    with ScriptedServer([(302, {"Location": "http://127.0.0.2:1/steal"}, b"")]) as server:
        with pytest.raises(SourceError, match="another origin"):
            client_for().get_json(server.url + "/x")


def test_redirect_within_the_origin_is_followed():
    with ScriptedServer([(307, {"Location": "/moved"}, b""), (200, {}, b"[2]")]) as server:
        assert client_for().get_json(server.url + "/x") == [2]
        assert server.requests[1]["path"] == "/moved"


def test_identity_encoding_is_requested_and_credentials_come_from_the_environment():
    limits = EndpointLimits(address_prefix="http://127.0.0.1", auth="bearer", token_env="PACS_TOKEN")
    settings = ClientSettings(allow_loopback=True, endpoints=[limits])
    with ScriptedServer([(200, {}, b"[]")]) as server:
        client_for(settings, environ={"PACS_TOKEN": "s3cret"}).get_json(server.url + "/x")
        headers = server.requests[0]["headers"]
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Authorization"] == "Bearer s3cret"


def test_read_timeout_is_per_read_not_whole_request():
    def slow_trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "5")
        handler.end_headers()
        for byte in b"[123]":  # 5 reads 0.3 s apart: 1.5 s in all, more than the 0.8 s idle limit
            time.sleep(0.3)
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        return None, None, None

    settings = ClientSettings(allow_loopback=True, read_timeout=0.8)
    with ScriptedServer([slow_trickle]) as server:
        assert client_for(settings).get_json(server.url + "/x") == [123]


def test_stalled_body_fails_on_the_idle_timeout():
    def stall(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"[")
        handler.wfile.flush()
        time.sleep(1.5)
        return None, None, None

    settings = ClientSettings(allow_loopback=True, read_timeout=0.3, max_retries=0)
    with ScriptedServer([stall]) as server:
        started = time.monotonic()
        with pytest.raises(Exception):
            client_for(settings).get_json(server.url + "/x")
        assert time.monotonic() - started < 1.2


def test_concurrency_per_endpoint_is_bounded():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def counting(handler):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.1)
        with lock:
            in_flight[0] -= 1
        return 200, {}, b"[]"

    limits = EndpointLimits(address_prefix="http://127.0.0.1", max_concurrency=2)
    client = client_for(ClientSettings(allow_loopback=True, endpoints=[limits]))
    with ScriptedServer([counting]) as server:
        threads = [threading.Thread(target=client.get_json, args=(server.url + "/x",)) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert peak[0] == 2


def test_request_rate_per_endpoint_is_bounded():
    limits = EndpointLimits(address_prefix="http://127.0.0.1", max_requests_per_second=20)
    client = client_for(ClientSettings(allow_loopback=True, endpoints=[limits]))
    with ScriptedServer([(200, {}, b"[]")]) as server:
        started = time.monotonic()
        for _ in range(6):
            client.get_json(server.url + "/x")
        assert time.monotonic() - started >= 5 / 20 - 0.01


def test_qido_query_values_are_not_percent_encoded_where_dicom_needs_them():
    url = build_url("http://h/dicom-web/", ["studies"], [("PatientName", "DOE^J*"), ("StudyDate", "2020-2021"),
                                                         ("includefield", "00080060"), ("q", "a b&c")])
    assert url == "http://h/dicom-web/studies?PatientName=DOE^J*&StudyDate=2020-2021&includefield=00080060&q=a%20b%26c"


class CountingServer:
    """A loopback listener that counts the connections it accepts (and answers nothing)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_warm_opens_connections_that_the_next_requests_use():
    with ScriptedServer([(200, {}, b"[]")]) as server:
        client = client_for()
        assert client.warm(server.url + "/dicom-web/studies", 3) == 3
        url = server.url + "/dicom-web/studies"
        pool = client.session.get_adapter(url).get_connection_with_tls_context(  # the pool requests uses
            requests.Request("GET", url).prepare(), verify=True)
        assert pool.num_connections == 3
        for _ in range(3):
            assert client.get_json(server.url + "/dicom-web/studies") == []
        assert pool.num_connections == 3  # no request opened one of its own


def test_warm_measures_the_round_trip_to_the_source():
    """The kernel's own RTT of the warmed connections (TCP_INFO), not a request's time: it
    decides whether a first transfer comes as one study stream (pipeline.streams_whole_study)."""
    with ScriptedServer([(200, {}, b"[]")]) as server:
        client = client_for()
        url = server.url + "/dicom-web/studies"
        assert client.round_trip(url) is None  # nothing measured before
        assert client.warm(url, 2) == 2
        rtt = client.round_trip(url)
        assert rtt is not None and 0 < rtt < 0.005  # loopback: microseconds
        assert client.round_trip("http://other.example/dicom-web") is None  # per origin


def test_warm_counts_only_connections_that_opened_and_respects_the_allow_list():
    counting = CountingServer()
    try:
        assert client_for().warm(counting.url, 2) == 2
        deadline = time.monotonic() + 2
        while len(counting.accepted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(counting.accepted) == 2
    finally:
        counting.close()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    assert client_for().warm(refused_url, 2) == 0  # nothing listens there: nothing kept, no error
    with pytest.raises(HostRefused):
        TransferClient(ClientSettings()).warm(counting.url, 2)  # loopback not allowed


def test_at_most_concurrency_less_one_requests_may_hold_a_slot_while_waiting():
    """A series streaming before its listing holds a slot; if every slot could be held so,
    the listings they wait for would never get one."""
    limits = EndpointLimits("http://pacs.example/", max_concurrency=3)
    client = client_for(ClientSettings(allowed_hosts=["pacs.example"], endpoints=[limits]))
    url = "http://pacs.example/dicom-web"
    with client.waiting_slot(url) as first, client.waiting_slot(url) as second:
        with client.waiting_slot(url) as third:
            assert (first, second, third) == (True, True, False)
    with client.waiting_slot(url) as again:
        assert again
    single = client_for(ClientSettings(allowed_hosts=["pacs.example"],
                                       endpoints=[EndpointLimits("http://pacs.example/", max_concurrency=1)]))
    with single.waiting_slot(url) as granted:
        assert not granted  # one slot: the listing always comes first
