"""The node driver's side of link-state routing: one ``RoutingCore``, its inputs and outputs.

``NodeRuntime`` owns one ``NodeRouting`` and feeds it neighbours' routing messages, timer
firings and the transport's link changes; it moves the core's ``SendTo`` outputs to the peer
transport and keeps the rest (neighbour changes, table changes, convergence) for status and
for whoever waits on them. Every change bumps ``version``, so a caller can wait for "anything
newer than what I saw" without polling (``wait_changed``).

Routing messages for a neighbour the transport cannot reach now are dropped, not queued: hellos
repeat, adverts are retransmitted until acknowledged, and the transport's ``link_changed``
makes the core say hello as soon as the path is back; a backlog of old hellos delivered on
reconnection would only make the adjacency flap.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from qnet.errors import NotFound, QnetError
from qnet.network.neighbours import NeighbourState
from qnet.network.routing import RoutingCore
from qnet.network.routing_config import RoutingConfig
from qnet.network.routing_events import (
    NeighbourDown,
    NeighbourUp,
    RouteEntry,
    RoutesChanged,
    RoutingConverged,
    RoutingMessage,
    SendTo,
)
from qnet.node.interfaces import PeerTransport
from qnet.node.peer_wire import WireMessage
from qnet.node.routing_setup import local_link_metrics, routing_config, topology_routes
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology

log = logging.getLogger("qnet.routing")

#: Neighbour changes kept for status.
EVENT_LOG = 64


@dataclass(frozen=True, slots=True)
class NeighbourChange:
    """A neighbour came up or went down, at physical time ``at_ns``."""

    at_ns: int
    peer: str
    up: bool
    reason: str = ""


class NodeRouting:
    def __init__(
        self,
        node: str,
        topology: Topology,
        transport: PeerTransport,
        clock: PhysicalClock,
        *,
        on_output: Callable[[], None] = lambda: None,
        on_neighbour: Callable[[str, bool], None] = lambda peer, up: None,
    ) -> None:
        self.node = node
        #: Told of every neighbour that comes up or goes down (circuits through it end).
        self._on_neighbour = on_neighbour
        self.topology = topology
        self.transport = transport
        self.clock = clock
        self.config: RoutingConfig = routing_config(topology.routing, clock.scale)
        self.core = RoutingCore(
            node,
            self.config,
            local_link_metrics(topology, node, self.config.fidelity_threshold),
            topology.node(node).params.memory_qubits,
        )
        self._on_output = on_output
        #: Set once ``route`` answers (the core's first full table).
        self.converged = trio.Event()
        #: Bumped by every change of neighbours, table or convergence.
        self.version = 0
        self._changed = trio.Event()
        self.changes: deque[NeighbourChange] = deque(maxlen=EVENT_LOG)
        self.protocol_errors = 0
        #: Routing messages dropped because the transport could not reach the neighbour.
        self.unsent = 0
        self._last_error: dict[str, str] = {}
        self._expected: dict[str, RouteEntry] | None = None

    # -- queries --------------------------------------------------------------------------------

    def routes(self) -> dict[str, RouteEntry]:
        return self.core.table()

    def route(self, destination: str) -> RouteEntry:
        """The route to ``destination``; NotConverged or Unreachable when there is none."""
        return self.core.route(destination)

    def neighbours(self) -> dict[str, NeighbourState]:
        return self.core.neighbours()

    def complete(self) -> bool:
        """Converged, and the table is what the topology gives with every node and link up."""
        if self._expected is None:
            self._expected = topology_routes(
                self.topology, self.node, self.config.fidelity_threshold
            )
        return self.converged.is_set() and self.core.table() == self._expected

    async def wait_changed(self, after_version: int) -> int:
        """Wait until ``version`` is above ``after_version``; returns the new version."""
        while self.version <= after_version:
            await self._changed.wait()
        return self.version

    # -- inputs -----------------------------------------------------------------------------

    def start(self) -> None:
        self.core.start(self.clock.now_ns())
        self._flush()

    def heard_from(self, sender: str) -> None:
        """Any message from ``sender`` proves it alive (``RoutingCore.heard_from``). A later
        dead time needs no new wake-up: the timer finds it not yet due."""
        self.core.heard_from(sender, self.clock.now_ns())

    def on_messages(self, sender: str, messages: Sequence[WireMessage]) -> None:
        now = self.clock.now_ns()
        for message in messages:
            assert isinstance(message, RoutingMessage)  # the runtime dispatches by family
            try:
                self.core.on_message(sender, message, now)
            except QnetError as exc:
                # A peer that breaks the protocol loses its message, never the daemon. A
                # misconfigured neighbour repeats itself every hello: say it once.
                self.protocol_errors += 1
                reason = str(exc)
                level = logging.DEBUG if self._last_error.get(sender) == reason else logging.WARNING
                self._last_error[sender] = reason
                log.log(level, "%s: routing message from %s refused: %s", self.node, sender, exc)
        self._flush()

    def on_timer(self, now: int) -> None:
        self.core.on_timer(now)
        self._flush()

    def next_deadline(self) -> int | None:
        return self.core.next_deadline()

    def link_changed(self, peer: str, up: bool) -> None:
        """The transport gained or lost its path to ``peer``."""
        now = self.clock.now_ns()
        try:
            if up:
                self.core.link_up(peer, now)
            else:
                self.core.link_down(peer, now)
        except NotFound:
            log.warning("%s: transport reports %s, which is not a neighbour", self.node, peer)
            return
        self._flush()

    # -- outputs ----------------------------------------------------------------------------

    def _flush(self) -> None:
        by_peer: dict[str, list[WireMessage]] = {}
        changed = False
        now = self.clock.now_ns()
        for out in self.core.pop_outputs():
            if isinstance(out, SendTo):
                by_peer.setdefault(out.peer, []).append(out.message)
                continue
            changed = True
            if isinstance(out, NeighbourUp):
                self.changes.append(NeighbourChange(now, out.peer, True))
                log.info("%s: routing neighbour %s is up", self.node, out.peer)
                self._on_neighbour(out.peer, True)
            elif isinstance(out, NeighbourDown):
                self.changes.append(NeighbourChange(now, out.peer, False, out.reason))
                log.info("%s: routing neighbour %s is down (%s)", self.node, out.peer, out.reason)
                self._on_neighbour(out.peer, False)
            elif isinstance(out, RoutesChanged):
                log.debug("%s: %d routes", self.node, len(out.routes))
            elif isinstance(out, RoutingConverged):
                log.info("%s: routing converged", self.node)
                self.converged.set()
        for peer, messages in by_peer.items():
            if not self.transport.connected(peer):
                self.unsent += len(messages)
                continue
            try:
                self.transport.send(peer, messages)
            except QnetError as exc:  # our own bug (an unencodable value): keep serving
                log.error("%s: routing messages to %s not sent: %s", self.node, peer, exc)
        if changed:
            self.version += 1
            self._changed.set()
            self._changed = trio.Event()
        self._on_output()
