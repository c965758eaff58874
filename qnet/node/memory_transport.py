"""In-memory peer transport for ``qnet.sim``: messages arrive after the fibre's light delay.

Each directed link is a delay line: what a node sends in one go travels as one batch and is
delivered ``length / c`` of physical time later, in order. Optional loss and duplication
(seeded) exercise the protocols' recovery in tests.

Each node's light in flight, over all its links, waits in one heap drained by one task, which
sleeps until the earliest arrival: sending moves that wake-up earlier when needed (a cancel
scope's deadline can be changed from outside), so a batch costs one task step, on arrival.

A node is reachable while its transport runs. When it stops (``qnet.sim`` stops a node), what
it had in flight is lost, messages arriving for it are dropped, and its neighbours' transports
report the link down at once (as a daemon's neighbours see its streams break), unless the stop
is silent; when it runs again they report the link up.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from qnet.node.interfaces import Deliver, LinkChanged, PeerRestarted
from qnet.node.peer_wire import Layer, WireMessage, layer_of
from qnet.physical.heralding import fibre_delay_ns
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology


@dataclass
class _Outbox:
    """One node's light in flight: (arrival, order sent, destination, batch), earliest first."""

    heap: list[tuple[float, int, str, list[WireMessage]]] = field(default_factory=list)
    #: The delivery task's sleep while it runs (its deadline is the earliest arrival).
    sleep: trio.CancelScope | None = None


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
        #: Light delay in trio seconds of each direction of each link.
        self._lines: dict[tuple[str, str], float] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._order = itertools.count()
        self._deliver: dict[str, Deliver] = {}
        self._link_changed: dict[str, LinkChanged] = {}
        self._neighbours: dict[str, list[str]] = {}
        #: Nodes whose next stop is silent (their neighbours are not told).
        self._silent: set[str] = set()
        self.batches = 0
        self.messages = 0
        #: Messages delivered, by the layer they belong to.
        self.by_layer: Counter[Layer] = Counter()
        for link in topology.links:
            delay = clock.trio_duration(fibre_delay_ns(link.params.length_km))
            self._lines[(link.a, link.b)] = delay
            self._lines[(link.b, link.a)] = delay
            self._neighbours.setdefault(link.a, []).append(link.b)
            self._neighbours.setdefault(link.b, []).append(link.a)

    def transport(self, node: str) -> MemoryTransport:
        return MemoryTransport(self, node)

    def stop_silently(self, node: str) -> None:
        """When ``node``'s transport next stops, do not tell its neighbours: they notice only
        by the silence (a cut fibre, a crashed machine)."""
        self._silent.add(node)

    def _attach(self, node: str, deliver: Deliver, link_changed: LinkChanged | None) -> None:
        self._deliver[node] = deliver
        if link_changed is not None:
            self._link_changed[node] = link_changed
        self._tell_neighbours(node, up=True)

    def _detach(self, node: str) -> None:
        self._deliver.pop(node, None)
        self._link_changed.pop(node, None)
        self._outbox(node).heap.clear()  # its light in flight is lost with it
        if node in self._silent:
            self._silent.discard(node)
        else:
            self._tell_neighbours(node, up=False)

    def _tell_neighbours(self, node: str, *, up: bool) -> None:
        for peer in self._neighbours.get(node, ()):
            changed = self._link_changed.get(peer)
            if changed is not None:
                changed(node, up)
        changed = self._link_changed.get(node)
        if up and changed is not None:
            for peer in self._neighbours.get(node, ()):
                if peer in self._deliver:
                    changed(peer, True)

    def _outbox(self, node: str) -> _Outbox:
        box = self._outboxes.get(node)
        if box is None:
            box = self._outboxes[node] = _Outbox()
        return box

    def _send(self, src: str, dst: str, messages: Sequence[WireMessage]) -> None:
        delay = self._lines.get((src, dst))
        if delay is None:
            return  # no such link: like light into an unconnected fibre
        kept = [m for m in messages if not (self.loss and self.rng.random() < self.loss)]
        if self.duplicate:
            kept += [m for m in kept if self.rng.random() < self.duplicate]
        if kept:
            box = self._outbox(src)
            due = trio.current_time() + delay
            heapq.heappush(box.heap, (due, next(self._order), dst, kept))
            if box.sleep is not None and due < box.sleep.deadline:
                box.sleep.deadline = due

    async def _run_outbox(self, src: str) -> None:
        box = self._outbox(src)
        heap = box.heap
        try:
            while True:
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as box.sleep:
                    await trio.sleep_forever()
                box.sleep = None
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, dst, batch = heapq.heappop(heap)
                    deliver = self._deliver.get(dst)
                    if deliver is not None:
                        self.batches += 1
                        self.messages += len(batch)
                        self.by_layer.update(layer_of(m) for m in batch)
                        deliver(src, batch)
        finally:
            box.sleep = None


class MemoryTransport:
    """One node's end of a ``MemoryNetwork`` (see ``PeerTransport``)."""

    def __init__(self, network: MemoryNetwork, node: str) -> None:
        self.network = network
        self.node = node

    async def run(
        self,
        deliver: Deliver,
        *,
        link_changed: LinkChanged | None = None,
        peer_restarted: PeerRestarted | None = None,  # nodes in one process never restart
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        net = self.network
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(net._run_outbox, self.node)
                net._attach(self.node, deliver, link_changed)
                task_status.started()
                await trio.sleep_forever()
        finally:
            net._detach(self.node)

    def send(self, peer: str, messages: Sequence[WireMessage]) -> None:
        self.network._send(self.node, peer, messages)

    def connected(self, peer: str) -> bool:
        return (self.node, peer) in self.network._lines and peer in self.network._deliver
