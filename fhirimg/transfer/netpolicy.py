"""Which hosts the transfer workers may talk to (the SSRF guard).

An Endpoint address comes from a pushed resource, so it is hostile until proven
otherwise: its host must be on the configured allow-list, every address its name
resolves to is checked, and the address a socket actually connected to is checked
again (so DNS rebinding between the check and the connect does not help). Link-local
and cloud metadata addresses are refused even when listed; loopback only when the
configuration allows it (the development default).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

# Cloud instance metadata services (AWS/GCP/Azure/OpenStack at 169.254.169.254 are also
# link-local; AWS IPv6, Alibaba and Oracle are not, so they are named here).
METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192"})
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                            "instance-data", "instance-data.ec2.internal"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Resolver = Callable[..., list]


class HostRefused(Exception):
    """The URL's host or one of its addresses is not allowed. ``host`` is the URL's own host
    (the client's input); the message may name resolved addresses, which only the log shows."""

    host: str | None = None


@dataclass
class HostPolicy:
    """Allow-list entries are ``host``, ``host:port`` or ``*.domain`` (any sub-domain)."""

    allowed_hosts: list[str] = field(default_factory=list)
    allow_loopback: bool = False
    resolve: Resolver = socket.getaddrinfo
    list_name: str = "transfer allow-list"  # named in refusals: which setting to change

    def check_url(self, url: str) -> tuple[str, str, int]:
        """Check a URL before any request; return (scheme, host, port)."""
        scheme, host, port = split_origin(url)
        try:
            self.check_host(host, port)
        except HostRefused as exc:
            exc.host = host
            raise
        return scheme, host, port

    def check_host(self, host: str, port: int) -> None:
        self.checked_addresses(host, port)

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """Check a host and port; return the addresses it resolves to, every one allowed.

        A client that cannot check the socket it connected (pynetdicom's DIMSE associations)
        connects to one of these instead of the name, so DNS cannot answer differently later.
        """
        if host in METADATA_HOSTS:
            raise HostRefused(f"host {host} is a cloud metadata service")
        if not self.is_listed(host, port):
            raise HostRefused(f"host {host}:{port} is not on the {self.list_name}")
        # A literal loopback host:port the operator listed is allowed even without allow_loopback.
        addresses = self.resolve_addresses(host, port)
        for address in addresses:
            self.check_connected(address, host, port)
        return addresses

    def check_connected(self, address: str, host: str, port: int) -> None:
        """An address `host` resolved to, or a socket to it connected to."""
        self.check_address(address, loopback=is_loopback_name(host) and self.names_exactly(host, port))

    def names_exactly(self, host: str, port: int) -> bool:
        """An allow-list entry `host:port` (no wildcard) is this host and port."""
        for entry in self.allowed_hosts:
            entry = entry.strip().lower()
            if _has_port(entry):
                name, _, entry_port = entry.rpartition(":")
                if name.strip("[]") == host and int(entry_port) == port:
                    return True
        return False

    def is_listed(self, host: str, port: int) -> bool:
        if self.allow_loopback and is_loopback_name(host):
            return True
        for entry in self.allowed_hosts:
            entry = entry.strip().lower()
            name, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
            if entry_port and int(entry_port) != port:
                continue
            name = name.strip("[]")
            if name == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False

    def resolve_addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = self.resolve(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise HostRefused(f"host {host} cannot be resolved: {exc}") from None
        return sorted({info[4][0] for info in infos})

    def check_address(self, address: str, loopback: bool = False) -> None:
        """Refuse link-local, metadata, unspecified and multicast addresses; loopback unless
        allowed (or `loopback`: the operator listed this very host:port)."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if str(ip) in METADATA_ADDRESSES or ip.is_link_local:
            raise HostRefused(f"address {ip} is link-local or a metadata service")
        if ip.is_loopback:  # before is_reserved: ::1 lies in IPv6's reserved ::/8
            if not (self.allow_loopback or loopback):
                raise HostRefused(f"address {ip} is loopback and loopback is not allowed")
            return
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            raise HostRefused(f"address {ip} is not a unicast host address")


def _has_port(entry: str) -> bool:
    if entry.startswith("["):
        return "]:" in entry
    return entry.count(":") == 1


def is_loopback_name(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_origin(url: str) -> tuple[str, str, int]:
    """(scheme, lower-case host, port) of an http(s) URL; anything else is refused."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise HostRefused(f"scheme {scheme or 'none'!r} is not allowed (http or https only)")
    if parts.username or parts.password:
        raise HostRefused("credentials in the URL are not accepted; configure them by reference")
    host = (parts.hostname or "").lower()
    if not host:
        raise HostRefused("URL has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise HostRefused("URL has an invalid port") from None
    return scheme, host, port
