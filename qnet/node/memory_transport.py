"""In-memory peer transport for ``qnet.sim``: messages arrive after the fibre's light delay.

Each directed link is a delay line: what a node sends in one go travels as one batch and is
delivered ``length / c`` of physical time later, in order. Optional loss and duplication
(seeded) exercise the protocols' recovery in tests.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from qnet.link.events import PeerMessage
from qnet.node.interfaces import Deliver
from qnet.physical.heralding import fibre_delay_ns
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology


@dataclass
class _Line:
    delay_s: float
    queue: deque[tuple[float, list[PeerMessage]]] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)


class MemoryNetwork:
    """The classical side of a simulated network: one delay line per direction of each link."""

    def __init__(
        self,
        topology: Topology,
        clock: PhysicalClock,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.clock = clock
        self.loss = loss
        self.duplicate = duplicate
        self.rng = random.Random(seed)
        self._lines: dict[tuple[str, str], _Line] = {}
        self._deliver: dict[str, Deliver] = {}
        self.batches = 0
        self.messages = 0
        for link in topology.links:
            delay = clock.trio_duration(fibre_delay_ns(link.params.length_km))
            self._lines[(link.a, link.b)] = _Line(delay)
            self._lines[(link.b, link.a)] = _Line(delay)

    def transport(self, node: str) -> MemoryTransport:
        return MemoryTransport(self, node)

    def _send(self, src: str, dst: str, messages: Sequence[PeerMessage]) -> None:
        line = self._lines.get((src, dst))
        if line is None:
            return  # no such link: like light into an unconnected fibre
        kept = [m for m in messages if not (self.loss and self.rng.random() < self.loss)]
        if self.duplicate:
            kept += [m for m in kept if self.rng.random() < self.duplicate]
        if kept:
            line.queue.append((trio.current_time() + line.delay_s, kept))
            line.wake.set()

    async def _run_line(self, src: str, dst: str, line: _Line) -> None:
        while True:
            if not line.queue:
                line.wake = trio.Event()
                await line.wake.wait()
                continue
            due, batch = line.queue[0]
            await trio.sleep_until(due)
            line.queue.popleft()
            deliver = self._deliver.get(dst)
            if deliver is not None:
                self.batches += 1
                self.messages += len(batch)
                deliver(src, batch)


class MemoryTransport:
    """One node's end of a ``MemoryNetwork`` (see ``PeerTransport``)."""

    def __init__(self, network: MemoryNetwork, node: str) -> None:
        self.network = network
        self.node = node

    async def run(
        self, deliver: Deliver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        net = self.network
        net._deliver[self.node] = deliver
        try:
            async with trio.open_nursery() as nursery:
                for (src, dst), line in net._lines.items():
                    if src == self.node:
                        nursery.start_soon(net._run_line, src, dst, line)
                task_status.started()
                await trio.sleep_forever()
        finally:
            net._deliver.pop(self.node, None)

    def send(self, peer: str, messages: Sequence[PeerMessage]) -> None:
        self.network._send(self.node, peer, messages)

    def connected(self, peer: str) -> bool:
        return (self.node, peer) in self.network._lines and peer in self.network._deliver
