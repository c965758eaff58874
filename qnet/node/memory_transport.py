"""In-memory peer transport for ``qnet.sim``: messages arrive after the fibre's light delay.

Each directed link is a delay line: what a node sends in one go travels as one batch and is
delivered ``length / c`` of physical time later, in order. Optional loss and duplication
(seeded) exercise the protocols' recovery in tests.

All light in flight, over every link, waits in one heap drained by one task (``run``, which
``qnet.sim`` starts with the network), which sleeps until the earliest arrival: sending moves
that wake-up earlier when needed (a cancel scope's deadline can be changed from outside). What
arrives at one instant is delivered in one step of that task, whichever nodes sent it, and a
node's batches from one neighbour that arrive together are handed over as one.

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

import trio

from qnet.node.interfaces import Deliver, LinkChanged, PeerRestarted
from qnet.node.peer_wire import Layer, WireMessage, layer_of
from qnet.physical.heralding import fibre_delay_ns
from qnet.runtime.alarm import Wakeup
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology


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
        #: Light in flight: (arrival, order sent, source, its incarnation, destination, batch).
        self._heap: list[tuple[float, int, str, int, str, list[WireMessage]]] = []
        #: The delivery task's sleep while it sleeps (its deadline is the earliest arrival).
        self._wakeup = Wakeup()
        #: Bumped when a node stops: its light still in flight is lost with it.
        self._incarnation: dict[str, int] = {}
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
        self._incarnation[node] = self._incarnation.get(node, 0) + 1
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

    def _send(self, src: str, dst: str, messages: Sequence[WireMessage]) -> None:
        delay = self._lines.get((src, dst))
        if delay is None:
            return  # no such link: like light into an unconnected fibre
        if self.loss or self.duplicate:
            kept = [m for m in messages if not (self.loss and self.rng.random() < self.loss)]
            if self.duplicate:
                kept += [m for m in kept if self.rng.random() < self.duplicate]
        else:
            kept = list(messages)
        if kept:
            due = trio.current_time() + delay
            entry = (due, next(self._order), src, self._incarnation.get(src, 0), dst, kept)
            heapq.heappush(self._heap, entry)
            sleep = self._wakeup.sleep
            if sleep is not None and due < sleep.deadline:
                sleep.deadline = due

    async def run(self) -> None:
        """Deliver the light in flight as it arrives; runs until cancelled."""
        heap = self._heap
        while True:
            await self._wakeup.until(heap[0][0] if heap else math.inf)
            self._arrive(trio.current_time())

    def _arrive(self, now: float) -> None:
        heap = self._heap
        # dst → src → messages, in order of first arrival: a node takes what each
        # neighbour's light brought at this instant in one go.
        arrived: dict[str, dict[str, list[WireMessage]]] = {}
        while heap and heap[0][0] <= now:
            _, _, src, incarnation, dst, batch = heapq.heappop(heap)
            if incarnation != self._incarnation.get(src, 0):
                continue  # sent by a node that has stopped since
            by_src = arrived.setdefault(dst, {})
            got = by_src.get(src)
            if got is None:
                by_src[src] = batch
            else:
                got.extend(batch)
        layers = self.by_layer
        for dst, by_src in arrived.items():
            for src, batch in by_src.items():
                deliver = self._deliver.get(dst)
                if deliver is None:
                    continue
                self.batches += 1
                self.messages += len(batch)
                for message in batch:
                    kind = type(message)
                    layer = _LAYERS.get(kind)
                    if layer is None:
                        layer = _LAYERS[kind] = layer_of(message)
                    layers[layer] += 1
                deliver(src, batch)


#: The layer of each message class (``layer_of`` looks it up by name; this is its memo).
_LAYERS: dict[type, Layer] = {}


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
            net._attach(self.node, deliver, link_changed)
            task_status.started()
            await trio.sleep_forever()
        finally:
            net._detach(self.node)

    def send(self, peer: str, messages: Sequence[WireMessage]) -> None:
        self.network._send(self.node, peer, messages)

    def connected(self, peer: str) -> bool:
        return (self.node, peer) in self.network._lines and peer in self.network._deliver
