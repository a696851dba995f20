"""The emulated WAN of ``fhirimg bench retrieve --wan``: the link really delays, limits and
loses packets, and the benchmark prints a line per profile with fhirimg, the plain GET and
the Orthanc peer. Its figures are for the operator; only the emulation's own bounds are asserted."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests
from click.testing import CliRunner

from fhirimg.bench.wan import EmulatedWan, Profile, available
from fhirimg.cli import main

from ..services import require_or_skip

RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 9999))
sock.settimeout(3)
print("ready", flush=True)
count = 0
try:
    while True:
        sock.recv(2048)
        count += 1
except socket.timeout:
    pass
print(count, flush=True)
"""


@pytest.fixture
def wan():
    reason = available()
    if reason:
        require_or_skip(reason)
    link = EmulatedWan()
    yield link
    link.close()


def serve_in(wan: EmulatedWan, directory) -> subprocess.Popen:
    server = subprocess.Popen(wan.command([sys.executable, "-m", "http.server", "8099", "--bind", "0.0.0.0",
                                           "-d", str(directory)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    session = requests.Session()
    session.trust_env = False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            session.get(f"http://{wan.remote}:8099/", timeout=1)
            return server
        except requests.RequestException:
            time.sleep(0.1)
    server.kill()
    raise AssertionError("the server in the namespace did not answer")


def timed_get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = requests.get(url, timeout=30)  # a new connection: handshake + request = 2 RTT
    response.raise_for_status()
    return time.perf_counter() - started, len(response.content)


def test_the_link_delays_and_limits_like_the_profile_says(wan, tmp_path):
    (tmp_path / "small").write_bytes(b"x")
    (tmp_path / "big").write_bytes(b"\0" * 2_000_000)
    server = serve_in(wan, tmp_path)
    try:
        wan.set_profile(Profile(0, 0))
        unshaped, _ = timed_get(f"http://{wan.remote}:8099/small")
        wan.set_profile(Profile(100, 40))
        small, _ = timed_get(f"http://{wan.remote}:8099/small")
        big, size = timed_get(f"http://{wan.remote}:8099/big")
    finally:
        server.kill()
    assert unshaped < 0.1
    assert 0.2 <= small < 0.6, small  # two round trips of 100 ms, plus the server's own time
    assert size == 2_000_000 and big >= size * 8 / 40e6, big  # no faster than 40 Mbit/s


def test_the_link_loses_the_share_of_packets_the_profile_says(wan):
    wan.set_profile(Profile(2, 0, 0.3))  # loss: the link switches to MTU-sized packets
    receiver = subprocess.Popen(wan.command([sys.executable, "-c", RECEIVER]), stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(1000):
                sock.sendto(b"p" * 200, (wan.remote, 9999))
                time.sleep(0.0005)
        received = int(receiver.stdout.readline())
    finally:
        receiver.kill()
    assert 600 <= received <= 800, received  # 30 % lost, give or take chance


def test_bench_retrieve_over_the_wan_prints_a_line_per_profile():
    if shutil.which("Orthanc") is None:
        require_or_skip("Orthanc is not installed")
    if available():
        require_or_skip(available())
    result = CliRunner().invoke(main, ["bench", "retrieve", "--wan", "10,200", "--series", "2", "--instances", "3",
                                       "--rows", "256", "--repeat", "1"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if row.startswith("RTT 10 ms, 200 Mbit/s"))
    figures = [float(x) for x in re.findall(r"\d+\.\d+", line)]
    assert len(figures) == 8 and all(f > 0 for f in figures), line  # 3 x (MB/s, first) + 2 ratios
    assert "fh/GET" in result.output and "fh/Orth" in result.output
    assert re.search(r"the source sends with TCP congestion control \w+", result.output)


def test_the_source_congestion_control_is_the_one_asked_for_or_refused_with_the_reason():
    """The sender's congestion control decides how parallel flows share the bottleneck (BBR,
    this host's default, and CUBIC, most archives', behave very differently there)."""
    reason = available()
    if reason:
        require_or_skip(reason)
    with EmulatedWan(congestion_control="reno") as link:  # reno is always built in and allowed
        assert link.congestion_control == "reno"
        assert subprocess.run(link.command(["sysctl", "-n", "net.ipv4.tcp_congestion_control"]),
                              capture_output=True, text=True).stdout.strip() == "reno"
    with pytest.raises(RuntimeError, match="tcp_allowed_congestion_control"):
        EmulatedWan(congestion_control="no-such-algorithm")
    result = CliRunner().invoke(main, ["bench", "retrieve", "--source-cc", "cubic"])
    assert result.exit_code == 2 and "goes with --wan" in result.output


def test_a_super_segment_that_does_not_fit_is_cut_at_a_segment_boundary():
    from fhirimg.bench.wanlink import VNET, fold, keep_segments
    payload = bytes(range(250)) * 12  # 3 000 bytes: segments of 1 000
    tcp = bytearray(20)
    tcp[12] = 5 << 4
    ip = bytearray(20)
    ip[0], ip[9] = 0x45, 6
    ip[12:16], ip[16:20] = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    ip[2:4] = (40 + len(payload)).to_bytes(2, "big")
    packet = VNET.pack(1, 1, 40, 1000, 20, 16) + bytes(ip) + bytes(tcp) + payload

    cut, dropped = keep_segments(packet, VNET.size + 40 + 2_500)
    assert dropped == 1 and len(cut) == VNET.size + 40 + 2_000 and cut[VNET.size + 40:] == payload[:2_000]
    head = cut[VNET.size:VNET.size + 20]
    assert int.from_bytes(head[2:4], "big") == 2_040
    assert fold(sum(int.from_bytes(head[i:i + 2], "big") for i in range(0, 20, 2))) == 0xFFFF  # IPv4 checksum holds
    pseudo = int.from_bytes(cut[VNET.size + 36:VNET.size + 38], "big")
    assert pseudo == fold(0x0A00 + 0x0001 + 0x0A00 + 0x0002 + 6 + 2_020)

    single, dropped = keep_segments(packet, VNET.size + 40 + 1_000)
    assert dropped == 2 and single[1] == 0 and VNET.unpack_from(single)[3] == 0  # no longer a super-segment
    assert keep_segments(packet, 500) == (None, 3)
    assert keep_segments(packet, len(packet)) == (packet, 0)
