"""The emulated WAN's wire: a packet delay line between two TUN devices, run as its own process.

This kernel has no ``sch_netem`` (nor fq, which a BPF delay would need), so the benchmark
does netem's job in user space, at the packet level: every IP packet leaving one TUN device
is read here, queued behind the link's serialisation (``rate``), held for the one-way delay
(RTT / 2), dropped with probability ``loss``, and written into the other device, in both
directions. TCP on both ends therefore sees a real round trip, a real bottleneck and real
losses: slow start, windows, and retransmissions behave as they would over a WAN.

The queue in front of the bottleneck is a router's drop-tail buffer of one bandwidth-delay
product, at least netem's default of 1 000 packets of 1 500 bytes: a packet arriving at a
full queue is dropped. (A limit counted in packets, as netem counts, let four TCP flows of
64 KB super-segments queue 20 MB, almost a second at 200 Mbit/s, in front of every request.)

When the devices carry TCP segmentation offload (virtio-net headers), a TCP super-segment of
up to 64 KB crosses the line as one read and one write, as netem sees them on a veth pair
with offload on (the usual set-up): that is what lets a Python line keep up with 1 Gbit/s
without taking a core away from the programs being measured. A super-segment that does not
fit in the queue is cut to the segments that do (``keep_segments``): the rest are dropped,
as a router drops the tail of a burst packet by packet (dropping the whole super-segment,
44 packets at once, sent four competing TCP flows into repeated timeouts). With loss asked
for the devices carry no offload, so that a loss is one MTU-sized packet as on a real link.

Control: one line on stdin, ``<one-way delay ms> <rate Mbit/s, 0 = unlimited> <loss 0..1>``,
answered ``ok <queue drops> <random drops>`` (segments dropped since the previous line) on
stdout once it applies. End of stdin ends the process.
"""
from __future__ import annotations

import collections
import os
import random
import select
import struct
import sys
import time

MIN_QUEUE_BYTES = 1000 * 1500
READS_PER_WAKE = 256
VNET = struct.Struct("<BBHHHH")  # virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
NEEDS_CSUM, GSO_TCPV4 = 0x01, 0x01


def fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def keep_segments(packet: bytes, room: int) -> tuple[bytes | None, int]:
    """What fits in ``room`` bytes of an IPv4 TCP super-segment (with its virtio-net header)
    cut at a segment boundary, and how many segments are dropped. The IPv4 length and
    checksum and the TCP pseudo-header sum (the checksum is left to the receiving kernel,
    NEEDS_CSUM) are rewritten; anything else is dropped whole."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET.unpack_from(packet)
    ip = packet[VNET.size:]
    if gso_type & 0x7F != GSO_TCPV4 or not flags & NEEDS_CSUM or not gso_size or ip[0] >> 4 != 4:
        return None, 1
    ihl = (ip[0] & 0x0F) * 4
    headers = ihl + (ip[ihl + 12] >> 4) * 4
    segments = -(-(len(ip) - headers) // gso_size)
    keep = max(0, (room - VNET.size - headers) // gso_size)
    if keep >= segments:
        return packet, 0
    if keep == 0:
        return None, segments
    length = headers + keep * gso_size
    out = bytearray(packet[:VNET.size + length])
    if keep == 1:  # one segment: no longer a super-segment
        out[1] = 0
        struct.pack_into("<H", out, 4, 0)
    head = memoryview(out)[VNET.size:]
    struct.pack_into("!H", head, 2, length)
    struct.pack_into("!H", head, 10, 0)
    struct.pack_into("!H", head, 10, ~fold(sum(struct.unpack_from(f"!{ihl // 2}H", head))) & 0xFFFF)
    pseudo = sum(struct.unpack_from("!4H", head, 12)) + 6 + (length - ihl)
    struct.pack_into("!H", head, csum_start + csum_offset, fold(pseudo))
    return bytes(out), segments - keep


class Direction:
    """One direction of the link: a bottleneck queue, then the propagation delay."""

    def __init__(self, source: int, target: int, offload: bool) -> None:
        self.source, self.target, self.offload = source, target, offload
        self.in_flight: collections.deque[tuple[float, bytes]] = collections.deque()
        self.link_free = 0.0  # when the bottleneck has sent everything queued so far
        self.queue_drops = self.random_drops = 0

    def admit(self, packet: bytes, now: float, delay: float, bytes_per_s: float, loss: float) -> None:
        if loss and random.random() < loss:
            self.random_drops += 1
            return
        if bytes_per_s:
            start = max(now, self.link_free)
            # A drop-tail queue of one bandwidth-delay product (at least netem's default).
            room = max(MIN_QUEUE_BYTES, 2 * delay * bytes_per_s) - (start - now) * bytes_per_s
            if len(packet) > room:
                packet, dropped = keep_segments(packet, int(room)) if self.offload else (None, 1)
                self.queue_drops += dropped
                if packet is None:
                    return
            self.link_free = start + len(packet) / bytes_per_s
            due = self.link_free + delay
        else:
            due = now + delay
        self.in_flight.append((due, packet))

    def deliver(self, now: float) -> float | None:
        """Write every packet that is due; return when the next one is."""
        while self.in_flight and self.in_flight[0][0] <= now:
            _, packet = self.in_flight.popleft()
            try:
                os.write(self.target, packet)
            except (BlockingIOError, OSError):
                pass  # the receiving device's queue is full: the packet is lost, as on a wire
        return self.in_flight[0][0] if self.in_flight else None


def run(fd_a: int, fd_b: int, offload: bool) -> None:
    os.set_blocking(fd_a, False)
    os.set_blocking(fd_b, False)
    directions = {fd_a: Direction(fd_a, fd_b, offload), fd_b: Direction(fd_b, fd_a, offload)}
    delay, bytes_per_s, loss = 0.0, 0.0, 0.0
    control = sys.stdin.fileno()
    poller = select.poll()
    for fd in (fd_a, fd_b, control):
        poller.register(fd, select.POLLIN)
    next_due: float | None = None
    while True:
        now = time.monotonic()
        timeout = None if next_due is None else max(0.0, (next_due - now) * 1000)
        for fd, _ in poller.poll(timeout):
            if fd == control:
                line = sys.stdin.readline()
                if not line:
                    return
                one_way_ms, mbit, loss = (float(x) for x in line.split())
                delay, bytes_per_s = one_way_ms / 1000, mbit * 1e6 / 8
                counts = [sum(d.queue_drops for d in directions.values()),
                          sum(d.random_drops for d in directions.values())]
                for d in directions.values():
                    d.queue_drops = d.random_drops = 0
                print("ok", *counts, flush=True)
                continue
            direction = directions[fd]
            now = time.monotonic()
            for _ in range(READS_PER_WAKE):
                try:
                    packet = os.read(fd, 65536 + 64)
                except BlockingIOError:
                    break
                direction.admit(packet, now, delay, bytes_per_s, loss)
        now = time.monotonic()
        dues = [due for due in (d.deliver(now) for d in directions.values()) if due is not None]
        next_due = min(dues) if dues else None


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "offload")
