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
without taking a core away from the programs being measured. The price: a drop at a full
queue loses a whole super-segment, a burst of up to 44 packets. With loss asked for the
devices carry no offload, so that a loss is one MTU-sized packet as on a real link.

Control: one line on stdin, ``<one-way delay ms> <rate Mbit/s, 0 = unlimited> <loss 0..1>``,
answered ``ok`` on stdout once it applies. End of stdin ends the process.
"""
from __future__ import annotations

import collections
import os
import random
import select
import sys
import time

MIN_QUEUE_BYTES = 1000 * 1500
READS_PER_WAKE = 256


class Direction:
    """One direction of the link: a bottleneck queue, then the propagation delay."""

    def __init__(self, source: int, target: int) -> None:
        self.source, self.target = source, target
        self.in_flight: collections.deque[tuple[float, bytes]] = collections.deque()
        self.link_free = 0.0  # when the bottleneck has sent everything queued so far

    def admit(self, packet: bytes, now: float, delay: float, bytes_per_s: float, loss: float) -> None:
        if loss and random.random() < loss:
            return
        if bytes_per_s:
            start = max(now, self.link_free)
            if (start - now) * bytes_per_s > max(MIN_QUEUE_BYTES, 2 * delay * bytes_per_s):
                return  # tail drop at a full bottleneck queue (one bandwidth-delay product)
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


def run(fd_a: int, fd_b: int) -> None:
    os.set_blocking(fd_a, False)
    os.set_blocking(fd_b, False)
    directions = {fd_a: Direction(fd_a, fd_b), fd_b: Direction(fd_b, fd_a)}
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
                print("ok", flush=True)
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
    run(int(sys.argv[1]), int(sys.argv[2]))
