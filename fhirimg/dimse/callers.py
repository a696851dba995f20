"""Who may open an association to the listener: ``[dicom] callers``, by AE title and address.

DIMSE has no credentials of its own (PS3.8 §7.1.1: the calling AE title is whatever the
peer says), so the AE title counts only together with the address the connection comes
from. A refusal is an A-ASSOCIATE-RJ, rejected-permanent by the service user (PS3.8
§9.3.4): "calling AE title not recognised" for an unknown caller or one calling from an
address it is not listed with, "called AE title not recognised" when the peer did not call
us by our ``ae_title``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

REJECTED_PERMANENT, SERVICE_USER = 0x01, 0x01
CALLING_AE_NOT_RECOGNISED, CALLED_AE_NOT_RECOGNISED = 0x03, 0x07

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Refusal:
    """Why an association is rejected: the A-ASSOCIATE-RJ (result, source, diagnostic) and words."""

    result: int
    source: int
    diagnostic: int
    reason: str


class CallerList:
    """The allow-list of calling nodes, parsed once from the ``[dicom]`` section."""

    def __init__(self, section: dict):
        self.ae_title = section["ae_title"].strip()
        self.callers: dict[str, tuple[Network, ...]] = {}
        for caller in section["callers"]:
            networks = tuple(parse_network(host) for host in caller["hosts"])
            self.callers[caller["ae_title"].strip()] = self.callers.get(caller["ae_title"].strip(), ()) + networks

    def refusal(self, calling_ae: str, called_ae: str, address: str) -> Refusal | None:
        """None when the association may go on, else why not (the called AE is checked first:
        a peer that dialled the wrong node learns nothing about our allow-list)."""
        calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
        if called_ae != self.ae_title:
            return Refusal(REJECTED_PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNISED,
                           f"called AE title {called_ae!r} is not ours ({self.ae_title!r})")
        networks = self.callers.get(calling_ae)
        if networks is None:
            return Refusal(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED,
                           f"calling AE title {calling_ae!r} is not in [dicom] callers")
        peer = peer_address(address)
        if peer is None or not any(peer in network for network in networks):
            return Refusal(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED,
                           f"calling AE title {calling_ae!r} may not connect from {address}")
        return None


def parse_network(host: str) -> Network:
    """One address ("10.1.2.34") or a CIDR block ("10.1.2.0/24"); anything else is a
    configuration error (ValueError), never a name to resolve."""
    try:
        return ipaddress.ip_network(host.strip(), strict=False)
    except ValueError:
        raise ValueError(f"[dicom] callers: {host!r} is not an IP address or CIDR block") from None


def peer_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address; an IPv4 peer of a dual-stack socket (``::ffff:10.1.2.34``) as IPv4."""
    try:
        peer = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        return peer.ipv4_mapped
    return peer
