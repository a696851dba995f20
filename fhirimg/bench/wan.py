"""An emulated WAN for ``fhirimg bench retrieve --wan``: a network namespace behind a delay line.

The source archive runs in its own network namespace. Its only way out is a TUN device whose
twin lives in this namespace; ``wanlink`` (a separate process, so that it never competes
for this interpreter's GIL) carries every packet between the two with the profile's delay,
rate and loss. Everything else (fhirimg, the plain GET, the peer Orthanc) stays here and
reaches the source at ``self.remote`` through that link only.

Needs root (network namespaces and TUN devices) and ``ip`` from iproute2; ``available()``
says why not otherwise. Profiles can be changed while the link is up (``set_profile``), so
one loaded source serves every profile of a run.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04


@dataclass(frozen=True)
class Profile:
    rtt_ms: float
    mbit: float  # 0 = no bandwidth limit
    loss: float = 0.0  # a fraction: 0.001 = 0.1 %

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """``RTT_MS,MBIT[,LOSS%]``, e.g. ``40,1000`` or ``20,100,0.1``."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise ValueError(f"a WAN profile is RTT_MS,MBIT[,LOSS_PERCENT], not {text!r}")
        rtt, mbit = float(parts[0]), float(parts[1])
        loss = float(parts[2]) / 100 if len(parts) == 3 else 0.0
        if not (0 <= rtt <= 2000 and 0 <= mbit <= 100_000 and 0 <= loss < 0.5):
            raise ValueError(f"WAN profile out of range: {text!r}")
        return cls(rtt, mbit, loss)

    def __str__(self) -> str:
        rate = f"{self.mbit:g} Mbit/s" if self.mbit else "unlimited"
        return f"RTT {self.rtt_ms:g} ms, {rate}" + (f", {self.loss * 100:g}% loss" if self.loss else "")


DEFAULT_PROFILES = (Profile(40, 1000), Profile(80, 200), Profile(20, 100, 0.001))


def available() -> str | None:
    """None when a WAN can be emulated here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "emulating a WAN needs root (network namespaces and TUN devices)"
    if shutil.which("ip") is None:
        return "emulating a WAN needs the `ip` command (Debian package iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "emulating a WAN needs /dev/net/tun (the kernel's TUN driver)"
    return None


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def _open_tun(name: str, offload: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    if offload:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    return fd


class EmulatedWan:
    """A namespace ``fhirimg-wan-<pid>`` reachable at ``remote`` (an address of its own)
    through the delay line. ``offload``: the link's mode (see wanlink); set_profile picks it."""

    def __init__(self, offload: bool = True, congestion_control: str | None = None) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        tag = os.getpid() % 100_000
        self.namespace = f"fhirimg-wan-{tag}"
        self.offload = offload
        octet2, octet3 = 200 + (tag // 256) % 50, tag % 256
        self.remote, self.local = f"10.{octet2}.{octet3}.1", f"10.{octet2}.{octet3}.2"
        self._names = (f"fwa{tag}", f"fwb{tag}")
        self._fds: list[int] = []
        self.link = None
        # A namespace of this name can only be left over by a dead process that had our pid.
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        _ip("netns", "add", self.namespace)
        try:
            _ip("link", "set", "lo", "up", namespace=self.namespace)
            if congestion_control:
                self._set_congestion_control(congestion_control)
            self.congestion_control = self._sysctl("net.ipv4.tcp_congestion_control")
            self._connect()
        except BaseException:
            self.close()
            raise

    def _sysctl(self, key: str) -> str:
        done = subprocess.run(self.command(["sysctl", "-n", key]), capture_output=True, text=True)
        return done.stdout.strip() or "unknown"

    def _set_congestion_control(self, name: str) -> None:
        """The source's TCP congestion control (the sender's, which decides how the link is
        shared); the host's default otherwise. Linux lets a namespace pick only what
        net.ipv4.tcp_allowed_congestion_control lists, a setting of the whole host."""
        done = subprocess.run(self.command(["sysctl", "-w", f"net.ipv4.tcp_congestion_control={name}"]),
                              capture_output=True, text=True)
        if done.returncode != 0:
            allowed = self._sysctl("net.ipv4.tcp_allowed_congestion_control")
            raise RuntimeError(f"the source cannot use TCP congestion control {name!r}: this host allows "
                               f"{allowed!r} (net.ipv4.tcp_allowed_congestion_control; load and allow it as root)")

    def _connect(self) -> None:
        """Both TUN devices and the delay line between them, with no delay yet."""
        far, near = self._names
        self._fds = [_open_tun(far, self.offload), _open_tun(near, self.offload)]
        _ip("link", "set", far, "netns", self.namespace)
        _ip("addr", "add", f"{self.remote}/32", "peer", self.local, "dev", far, namespace=self.namespace)
        _ip("link", "set", far, "up", namespace=self.namespace)
        _ip("addr", "add", f"{self.local}/32", "peer", self.remote, "dev", near)
        _ip("link", "set", near, "up")
        self.link = subprocess.Popen([sys.executable, "-m", "fhirimg.bench.wanlink", *map(str, self._fds),
                                      "offload" if self.offload else "plain"],
                                     pass_fds=self._fds, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._send(Profile(0, 0))

    def _disconnect(self) -> None:
        """Stop the delay line and close the devices (a TUN device goes with its last descriptor)."""
        if self.link is not None:
            self.link.stdin.close()
            try:
                self.link.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.link.kill()
            self.link = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def set_profile(self, profile: Profile) -> tuple[int, int]:
        """Apply a profile (returns the packets dropped under the previous one). Loss needs packets of one MTU (see wanlink), so a profile with loss
        runs on a link without offload and one without loss on a link with it: the devices
        are replaced when that changes (servers in the namespace keep their sockets)."""
        if self.offload != (profile.loss == 0):
            self._disconnect()
            self.offload = profile.loss == 0
            self._connect()
        return self._send(profile)

    def drops(self) -> tuple[int, int]:
        """Packets dropped (at the full queue, at random) since the profile was set or last asked."""
        return self._send(self.profile)

    def _send(self, profile: Profile) -> tuple[int, int]:
        self.link.stdin.write(f"{profile.rtt_ms / 2} {profile.mbit} {profile.loss}\n")
        self.link.stdin.flush()
        answer = self.link.stdout.readline().split()
        if not answer or answer[0] != "ok":
            raise RuntimeError("the WAN delay line did not take the profile")
        self.profile = profile
        return int(answer[1]), int(answer[2])

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the far namespace (where the source archive lives)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def close(self) -> None:
        self._disconnect()
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)

    def __enter__(self) -> "EmulatedWan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
