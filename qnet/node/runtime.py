"""The node driver: one per node, the same code in a daemon and in ``qnet.sim``.

It owns the node's layer cores (one EGP core per link, one routing core) and moves their inputs
and outputs: heralds from the channel backend, messages from neighbours, timers, link changes
from the transport and requests from above go in; peer messages go to the transport, physical
commands of the link cores to the node's one link executor (``executor.py``: each core's
commands run in the order the core issued them, and what several links issue together shares
an Execute request; the circuits' go there too, first in their batch), and deliveries to
subscribers. The cores never wait; only this driver does.

Messages from neighbours are dispatched by family (``_handlers``: marker base class → handler):
link messages to the EGP core of the link they came over, routing messages to the routing
core. A new core of the network layer (circuits) registers its base class there.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from qnet.errors import (
    AlreadyExists,
    InvalidArgument,
    NoMemory,
    NotFound,
    ProtocolError,
    QnetError,
    Unreachable,
    error_from_wire,
)
from qnet.link.egp import EgpConfig, EgpCore
from qnet.link.events import (
    Arm,
    CreateErr,
    CreateRequest,
    Free,
    Kind,
    MeasureQubit,
    PairOk,
    PeerMessage,
    PhysicalCommand,
    UpperEvent,
)
from qnet.network.circuit import CircuitConfig
from qnet.network.circuit_events import NETWORK_PURPOSE_BASE, CircuitMessage
from qnet.network.datagram import DatagramCore, DatagramMessage, DatagramReceived, Forward
from qnet.network.routing_events import RouteEntry, RoutingMessage
from qnet.node.circuit_driver import CircuitHandle, NodeCircuits
from qnet.node.executor import CommandQueue, NodeExecutor
from qnet.node.interfaces import ChannelAccess, PeerTransport
from qnet.node.peer_wire import WireMessage
from qnet.node.physical_ops import operations
from qnet.node.routing_driver import NodeRouting
from qnet.node.transport_driver import NodeTransport
from qnet.physical.events import HeraldEvent
from qnet.runtime.alarm import Wakeup
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology
from qnet.v1 import channel_pb2 as pb

log = logging.getLogger("qnet.node")


@dataclass
class LinkCounters:
    """What ``qnet links`` shows for one link, as seen from this node."""

    heralds: int = 0
    delivered: int = 0
    errors: int = 0
    fidelity_sum: float = 0.0
    first_request_ns: int | None = None
    last_delivery_ns: int | None = None

    @property
    def mean_fidelity(self) -> float:
        return self.fidelity_sum / self.delivered if self.delivered else math.nan

    @property
    def rate_hz(self) -> float:
        """Pairs delivered per physical second since the first request on the link."""
        if not self.delivered or self.first_request_ns is None or self.last_delivery_ns is None:
            return 0.0
        span = self.last_delivery_ns - self.first_request_ns
        return self.delivered / (span * 1e-9) if span > 0 else 0.0


@dataclass
class _Link:
    peer: str
    core: EgpCore
    commands: CommandQueue
    subscribers: list[trio.MemorySendChannel[UpperEvent]] = field(default_factory=list)
    counters: LinkCounters = field(default_factory=LinkCounters)


class NodeRuntime:
    """Drive one node. ``run`` it in a nursery; then use ``create`` and ``subscribe``."""

    def __init__(
        self,
        name: str,
        topology: Topology,
        channel: ChannelAccess,
        transport: PeerTransport,
        clock: PhysicalClock,
        *,
        rto_ns: int | None = None,
        latency_ns: int = 0,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.topology = topology
        self.spec = topology.node(name)
        self.channel = channel
        self.transport = transport
        self.clock = clock
        self.started_wall = time.monotonic()
        self._rto_ns = rto_ns
        self._latency_ns = latency_ns
        self._seed = seed
        self._links: dict[str, _Link] = {}
        #: Each core's next deadline as last read (absent: none), keyed by the peer of a
        #: link core or by the network-layer driver; ``_timers`` sleeps until the earliest.
        self._due: dict[object, int] = {}
        #: The timer task's sleep while it sleeps, and the physical time it sleeps until
        #: (None: no deadline). A core whose deadline changes moves the sleep's deadline,
        #: earlier or later, rather than wake the task: the task wakes only when a timer is
        #: due, not to re-read deadlines, nor for one that has since gone (an acknowledged
        #: retransmission).
        self._wakeup = Wakeup()
        self._sleep_until: int | None = None
        self._balancing = False
        #: Inputs being handled (``_balance_memory`` waits for the outermost to end).
        self._holding = 0
        #: KEEP halves link-layer clients hold, per link (``set_upper_held``).
        self._client_held: dict[str, int] = {}
        self._upper_reported: set[str] = set()
        #: Qubits applications hold (allocated, or pairs and teleported qubits they took).
        self._app_qubits: set[int] = set()
        #: Applications waiting for a qubit while the memory is full (``allocate_qubit``).
        self._app_waiting = 0
        #: Free qubits kept for applications' next allocations (``reserve_app_memory``).
        self._app_reserve = 0
        self._memory_changed = trio.Event()
        self.ready = trio.Event()
        #: Messages from neighbours refused here or by a link core (routing counts its own).
        self.protocol_errors = 0
        self._input = _OneInput(self)
        self._executor = NodeExecutor(name, channel, self.now, settle=self._one_input)
        # Routing and circuits send through the link layers' acknowledgement carrier.
        carrier = _AckCarrier(transport, self)
        self.routing = NodeRouting(
            name,
            topology,
            carrier,
            clock,
            on_output=lambda: self._set_due(self.routing, self.routing.next_deadline()),
            on_neighbour=self._neighbour_changed,
        )
        self.circuits = NodeCircuits(
            name,
            topology,
            channel,
            carrier,
            clock,
            executor=self._executor,
            create=self.create,
            cancel=self.cancel,
            config=CircuitConfig(latency_ns=latency_ns),
            on_output=lambda: self._set_due(self.circuits, self.circuits.next_deadline()),
        )
        self.circuits.listeners.append(self._balance_memory)
        self.datagrams = DatagramCore(name, lambda destination: self.route(destination).next_hop)
        self._datagram_listeners: dict[int, trio.MemorySendChannel[DatagramReceived]] = {}
        #: The transport layer's driver (connections between ports of any two nodes).
        self.transport_layer = NodeTransport(
            self,
            close_circuit=self.circuits.close,
            on_output=lambda: self._set_due(
                self.transport_layer, self.transport_layer.next_deadline()
            ),
        )
        self.circuits.claim_incoming(
            self.transport_layer.claims, self.transport_layer.take_incoming
        )
        #: Peer messages by family: the base class of a core's messages → who takes them.
        self._handlers: dict[type, Callable[[str, list[Any]], None]] = {
            PeerMessage: self._on_link_messages,
            RoutingMessage: self.routing.on_messages,
            CircuitMessage: self.circuits.on_messages,
            DatagramMessage: self._on_datagrams,
        }
        #: Message class → the family in ``_handlers`` it belongs to (found once per class).
        self._families: dict[type, type] = {}

    # -- public --------------------------------------------------------------------------

    @property
    def peers(self) -> list[str]:
        return sorted(self._links)

    def now(self) -> int:
        return self.clock.now_ns()

    def create(self, peer: str, request: CreateRequest) -> int:
        """Submit a link-layer CREATE towards neighbour ``peer``; returns its create id.
        Results arrive at the subscribers of that link (at both ends)."""
        link = self._link(peer)
        now = self.now()
        create_id = link.core.create(request, now)
        if link.counters.first_request_ns is None:
            link.counters.first_request_ns = now
        self._flush(link)
        return create_id

    def cancel(self, peer: str, create_id: int) -> bool:
        """Withdraw a CREATE this node issued towards ``peer``: it ends with ERR CANCELLED at
        both ends (``EgpCore.cancel``). False if it had already ended."""
        link = self._link(peer)
        taken = link.core.cancel(create_id, self.now())
        self._flush(link)
        return taken

    async def execute_on_link(
        self, peer: str, ops: Sequence[pb.Operation]
    ) -> list[pb.OperationResult | QnetError]:
        """Run backend operations on qubits the link to ``peer`` delivered (measuring them,
        say) in order with the link's own commands, in the same Execute requests: per-call
        cost dominates. One entry per operation: its result, or the error that stopped it."""
        hosted = _HostedOps(tuple(ops))
        self._link(peer).commands.send_nowait(hosted)
        await hosted.done.wait()
        return hosted.results

    def set_upper_held(self, peer: str, count: int) -> None:
        """KEEP qubits of the link to ``peer`` delivered to link-layer users and not yet
        measured or freed by them: the link's arming counts them (and the circuits' own)
        against memory."""
        link = self._link(peer)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidArgument(f"held qubits must be an integer ≥ 0, got {count!r}")
        self._client_held[peer] = count
        self._flush(link)

    def hold_qubits(self, qubits: Iterable[int]) -> None:
        """Count qubits an application took against the node's memory until released."""
        self._app_qubits.update(qubits)
        self._balance_memory()

    def release_qubits(self, qubits: Iterable[int]) -> None:
        self._app_qubits.difference_update(qubits)
        self._balance_memory()

    @property
    def app_qubits(self) -> frozenset[int]:
        return frozenset(self._app_qubits)

    def reserve_app_memory(self, count: int) -> None:
        """Keep ``count`` free qubits for applications' allocations to come: the link layers
        do not arm them (an application that allocates steadily finds its qubit free, instead
        of waiting until a pair somewhere is consumed)."""
        if count != self._app_reserve:
            self._app_reserve = max(0, count)
            self._balance_memory()

    def memory_changed(self) -> None:
        """The transport layer took or gave back qubits: share the rest between the links."""
        self._balance_memory()

    async def allocate_qubit(self, *, timeout_ns: int) -> int:
        """A qubit in |0⟩ for an application, counted as held by it (``hold_qubits``).

        Applications come before the link layers: while one waits, the link cores count it
        against their memory, so they stop arming new attempts and the first qubit that frees
        is the application's. ``NoMemory`` after ``timeout_ns`` of physical time."""
        deadline = self.now() + timeout_ns
        self._app_waiting += 1
        balanced = False
        try:
            while True:
                try:
                    (qubit,) = await self.channel.allocate(1)
                except NoMemory:
                    if self.now() >= deadline:
                        raise
                    if not balanced:
                        # Once, for the link cores to count this wait. Balancing wakes every
                        # waiting allocation: two that balanced on each wake-up would wake
                        # each other for ever without time passing.
                        self._balance_memory()
                        balanced = True
                    changed = self._memory_changed
                    with trio.move_on_at(self.clock.trio_time(deadline)):
                        await changed.wait()
                    continue
                break
        finally:
            self._app_waiting -= 1
        self.hold_qubits((qubit,))
        return qubit

    def subscribe(self, peer: str) -> trio.MemoryReceiveChannel[UpperEvent]:
        """Every OK and ERR of the link to ``peer`` from now on, whoever asked. KEEP pairs'
        qubits become the subscriber's to use and free."""
        send, recv = trio.open_memory_channel[UpperEvent](math.inf)
        self._link(peer).subscribers.append(send)
        return recv

    def counters(self, peer: str) -> LinkCounters:
        return self._link(peer).counters

    def routes(self) -> dict[str, RouteEntry]:
        """This node's routing table by destination (partial until routing converged)."""
        return self.routing.routes()

    def route(self, destination: str) -> RouteEntry:
        """The route to ``destination``; ``NotConverged`` before routing's first full table,
        ``Unreachable`` when there is none."""
        return self.routing.route(destination)

    def open_circuit(
        self, destination: str, *, min_fidelity: float, number: int = 0
    ) -> CircuitHandle:
        """Open a circuit to ``destination`` along this node's route to it, for ``number``
        end-to-end pairs (0: until closed) of at least ``min_fidelity`` at delivery. Raises
        ``NotConverged``/``Unreachable`` when there is no route yet or at all; ``await
        handle.wait_open()`` for the hops' answer. The far end takes it from
        ``circuits.incoming``."""
        if destination == self.name:
            raise InvalidArgument(f"a circuit from {self.name} to itself", node=self.name)
        if destination not in self.topology.node_names:
            raise NotFound(f"no node {destination!r} in this network", node=self.name)
        route = self.route(destination)
        return self.circuits.open(route.path, min_fidelity, number)

    def send_datagram(self, destination: str, protocol: int, payload: bytes) -> None:
        """Send ``payload`` to ``destination``'s listener of ``protocol``, hop by hop along
        the routing tables. Best effort; raises NotConverged/Unreachable when there is no
        route now."""
        self.datagrams.send(destination, protocol, payload)
        self._flush_datagrams()

    def listen_datagrams(self, protocol: int) -> trio.MemoryReceiveChannel[DatagramReceived]:
        """Datagrams for this node with ``protocol``, from now on (one listener each)."""
        if protocol in self._datagram_listeners:
            raise AlreadyExists(f"protocol {protocol} has a listener", node=self.name)
        send, recv = trio.open_memory_channel[DatagramReceived](math.inf)
        self._datagram_listeners[protocol] = send
        return recv

    def _on_datagrams(self, sender: str, messages: list[Any]) -> None:
        for message in messages:
            try:
                self.datagrams.on_message(sender, message)
            except QnetError as exc:
                self.protocol_errors += 1
                log.warning("%s: datagram from %s refused: %s", self.name, sender, exc)
        self._flush_datagrams()

    def _flush_datagrams(self) -> None:
        by_peer: dict[str, list[WireMessage]] = {}
        for out in self.datagrams.pop_outputs():
            if isinstance(out, Forward):
                by_peer.setdefault(out.peer, []).append(out.message)
                continue
            listener = self._datagram_listeners.get(out.protocol)
            try:
                if listener is None:
                    raise trio.BrokenResourceError
                listener.send_nowait(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._datagram_listeners.pop(out.protocol, None)
                self.datagrams.counters["dropped"] += 1
        for peer, batch in by_peer.items():
            self.transport.send(peer, batch)

    @property
    def routing_converged(self) -> trio.Event:
        """Set once ``route`` answers."""
        return self.routing.converged

    def memory_in_use(self) -> int:
        """Qubits the link layer holds (armed or waiting for the peer or a purification)."""
        return sum(len(link.core.pairs) + link.core.armed for link in self._links.values())

    # -- driver --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rng = random.Random(f"{self._seed}:{self.name}")
        for spec in self.topology.links_of(self.name):
            peer = spec.other(self.name)
            theory = await self.channel.declare_link(peer, spec.params)
            config = EgpConfig(
                node=self.name,
                peer=peer,
                link=spec.params,
                local=self.spec.params,
                remote=self.topology.node(peer).params,
                rto_ns=self._rto_ns,
                latency_ns=self._latency_ns,
                # Between daemons (a retransmission timeout is given) an acknowledgement
                # waits up to a quarter of it for other messages to travel with; in qnet.sim
                # messages cost little and acknowledgements go at once.
                ack_delay_ns=(self._rto_ns or 0) // 4,
                # A daemon may stall for a second on a loaded machine (see EgpConfig).
                herald_grace_ns=None if self._rto_ns is None else 100 * self._rto_ns,
            )
            core = EgpCore(config, rng=random.Random(rng.random()))
            core.start_after(theory.last_sequence)
            commands = self._executor.queue(_LinkCommands(self, peer))
            self._links[peer] = _Link(peer, core, commands)
        # Routing starts before the transport, which may report links up at once.
        self.routing.start()
        async with self.channel.heralds() as heralds, trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    self.transport.run,
                    self._on_messages,
                    link_changed=self._link_changed,
                    peer_restarted=self._peer_restarted,
                )
            )
            nursery.start_soon(self._executor.run)
            await nursery.start(self.transport_layer.run)
            nursery.start_soon(self._timers)
            nursery.start_soon(self._pump_heralds, heralds)
            self.ready.set()
            task_status.started()

    async def _pump_heralds(self, heralds: AsyncIterator[HeraldEvent]) -> None:
        async for herald in heralds:
            link = self._links.get(herald.peer)
            if link is None:
                log.warning("%s: herald from %s, which is not a neighbour", self.name, herald.peer)
                continue
            link.counters.heralds += 1
            if link.counters.first_request_ns is None:
                # The end that did not ask still measures the rate from its first pair.
                link.counters.first_request_ns = herald.emitted_ns
            try:
                link.core.on_herald(
                    herald.sequence,
                    herald.qubit,
                    herald.bell_index,
                    herald.emitted_ns,
                    max(self.now(), herald.time_ns),
                    bright_state=herald.bright_state or None,
                )
            except QnetError as exc:
                log.error(
                    "%s: herald %d on %s refused: %s", self.name, herald.sequence, link.peer, exc
                )
            self._flush(link)
        # The backend ended our session (taken over, or gone): this node can do nothing more,
        # so say so loudly rather than keep serving a network it is no longer part of.
        raise Unreachable(f"the channel backend ended the session of {self.name}", node=self.name)

    def _on_messages(self, sender: str, messages: Sequence[WireMessage]) -> None:
        if sender not in self._links:
            self.protocol_errors += 1
            log.warning(
                "%s: %d messages from %s, not a neighbour", self.name, len(messages), sender
            )
            return
        # Hellos can sit behind a backlog of other messages on a busy link; what arrives at
        # all shows the neighbour lives (its dead timer is for silence).
        self.routing.heard_from(sender)
        by_family: dict[type, list[WireMessage]] = {}
        families = self._families
        for msg in messages:
            kind = type(msg)
            base = families.get(kind)
            if base is None:
                base = next((b for b in self._handlers if issubclass(kind, b)), None)
                if base is None:
                    self.protocol_errors += 1
                    log.warning("%s: no core here takes %s", self.name, kind.__name__)
                    continue
                families[kind] = base
            by_family.setdefault(base, []).append(msg)
        self._holding += 1
        try:
            for base, batch in by_family.items():
                self._handlers[base](sender, batch)
        finally:
            self._holding -= 1
        self._balance_memory()

    def _on_link_messages(self, sender: str, messages: list[PeerMessage]) -> None:
        link = self._links[sender]
        now = self.now()
        for msg in messages:
            try:
                link.core.on_message(msg, now)
            except (ProtocolError, QnetError) as exc:
                # A peer that breaks the protocol loses its message, never the daemon.
                self.protocol_errors += 1
                log.warning("%s: message from %s refused: %s", self.name, sender, exc)
        self._flush(link)

    def _link_changed(self, peer: str, up: bool) -> None:
        self.routing.link_changed(peer, up)
        if not up:
            self.circuits.link_changed(peer, up)
            link = self._links.get(peer)
            if link is not None:
                link.core.peer_lost(self.now())
                self._flush(link)

    def _peer_restarted(self, peer: str) -> None:
        """``peer``'s daemon is a new process: its link core starts afresh with it."""
        link = self._links.get(peer)
        if link is not None:
            log.info("%s: %s restarted; starting the link afresh", self.name, peer)
            link.core.peer_restarted(self.now())
            self._flush(link)

    def _neighbour_changed(self, peer: str, up: bool) -> None:
        self.circuits.link_changed(peer, up)

    def _set_due(self, key: object, deadline: int | None) -> None:
        """``key``'s core now has ``deadline`` (None: none): move the timer task's wake-up
        if the earliest deadline changed. While the task runs it re-reads every core's
        deadline itself before it sleeps again."""
        due = self._due
        if deadline is None:
            if due.pop(key, None) is None:
                return
        elif due.get(key) == deadline:
            return
        else:
            due[key] = deadline
        sleep = self._wakeup.sleep
        if sleep is None:
            return
        first = min(due.values()) if due else None
        if first != self._sleep_until:
            self._sleep_until = first
            sleep.deadline = math.inf if first is None else self.clock.trio_time(first)

    def _read_deadlines(self) -> dict[object, int]:
        """Every core's next deadline, read afresh."""
        due: dict[object, int] = {}
        for peer, link in self._links.items():
            deadline = link.core.next_deadline()
            if deadline is not None:
                due[peer] = deadline
        for driver in (self.routing, self.circuits, self.transport_layer):
            deadline = driver.next_deadline()
            if deadline is not None:
                due[driver] = deadline
        self._due = due
        return due

    def _fire(self, key: object, now: int) -> None:
        """Run ``key``'s core's timer if its deadline, read afresh, has come."""
        link = self._links.get(key) if isinstance(key, str) else None
        if link is not None:
            deadline = link.core.next_deadline()
            if deadline is not None and deadline <= now:
                link.core.on_timer(now)
                self._flush(link)
            return
        for driver in (self.routing, self.circuits, self.transport_layer):
            if key is driver:
                deadline = driver.next_deadline()
                if deadline is not None and deadline <= now:
                    driver.on_timer(now)
                return

    async def _timers(self) -> None:
        while True:
            due = self._read_deadlines()
            first = min(due.values()) if due else None
            self._sleep_until = first
            await self._wakeup.until(math.inf if first is None else self.clock.trio_time(first))
            # The clock reached the deadline; its float seconds may read a nanosecond short
            # of it, which must not postpone the timer to the next wake.
            now = self.now()
            if self._sleep_until is not None:
                now = max(now, self._sleep_until)
            # The cores whose deadline, as last read, has come (each checks its own afresh);
            # one whose deadline moved earlier unseen is found by the full read before the
            # next sleep, which then ends at once.
            for key in [key for key, deadline in self._due.items() if deadline <= now]:
                self._fire(key, now)

    def _flush(self, link: _Link) -> None:
        """Move a core's outputs to where they go; never blocks.

        Circuit events go to the network layer only after every output is placed: it may
        answer with a new CREATE on this very link, whose commands must queue behind the
        ones the core issued before (a Disarm queued after new Arms would undo them)."""
        core = link.core
        self._holding += 1
        try:
            messages: list[PeerMessage] = []
            circuit_events: list[PairOk | CreateErr] = []
            for out in core.pop_outputs():
                if isinstance(out, PeerMessage):
                    messages.append(out)
                elif isinstance(out, PhysicalCommand):
                    link.commands.send_nowait(out)
                elif self._deliver(link, out):
                    assert isinstance(out, PairOk | CreateErr)
                    circuit_events.append(out)
            if messages:
                self.transport.send(link.peer, messages)
            self._set_due(link.peer, core.next_deadline())
            for event in circuit_events:
                self.circuits.on_link_event(link.peer, event)
        finally:
            self._holding -= 1
        self._balance_memory()

    def _one_input(self) -> _OneInput:
        """Handle what happens inside as one input: the memory is balanced once, after."""
        return self._input

    def _balance_memory(self) -> None:
        """Tell each link core how much of the node's memory the others use: the links and
        the network layer share it, and a core that arms past it only meets NoMemory.

        Once per input: while one is being handled (``_holding``: a link core's outputs
        being moved, a batch of messages dispatched) the calls its parts make are left to
        the one at its end. Until then a core counts the halves it delivered as held
        (``EgpCore.set_upper_held``), so its arming errs on the side of caution."""
        if self._balancing or self._holding:
            return
        self._balancing = True
        try:
            # Read once, and only if a core needs it: most balances change nothing.
            now = -1
            links = self._links
            circuits_core = self.circuits.core
            held = circuits_core.qubits_held_by_link()
            client_held = self._client_held
            reported = self._upper_reported
            # A link may not arm into what a circuit reserved on another link: otherwise an
            # intermediate node's busier side fills the memory with pairs that wait for a
            # partner the starved side can then never make (a repeater deadlock).
            reserved = circuits_core.reserved_by_link()
            # Qubits out of the link layers' hands: the applications', the transport layer's
            # buffered pairs and teleport halves, and a slot per application waiting for one.
            claimed = (
                len(self._app_qubits)
                + max(self._app_waiting, self._app_reserve)
                + self.transport_layer.core.held_count()
            )
            # (link, its claim, whether its core changed) per link, in order.
            claims: list[tuple[_Link, int, bool]] = []
            for peer, link in links.items():
                core = link.core
                moved = False
                upper = held.get(peer, 0) + client_held.get(peer, 0)
                if upper or peer in reported or peer in client_held:
                    # Reported once, always reported: the core then counts every half it
                    # delivers as held until the next report, which keeps arming honest
                    # between a delivery and its user taking it.
                    reported.add(peer)
                    if core.upper_held_changes(upper):
                        if now < 0:
                            now = self.now()
                        moved = core.set_upper_held(upper, now)
                claim = core.memory_used()
                if reserved:
                    claim = max(claim, reserved.get(peer, 0))
                claimed += claim
                claims.append((link, claim, moved))
            for link, claim, moved in claims:
                core = link.core
                if core.memory_elsewhere_changes(claimed - claim):
                    if now < 0:
                        now = self.now()
                    if core.set_memory_elsewhere(claimed - claim, now):
                        moved = True
                if core.has_outputs:
                    self._flush(link)
                elif moved:
                    self._set_due(link.peer, core.next_deadline())
        finally:
            self._balancing = False
        if self._app_waiting:  # a hot path: wake only when an allocation waits
            self._memory_changed.set()
            self._memory_changed = trio.Event()

    def _deliver(self, link: _Link, event: UpperEvent) -> bool:
        """Count and hand out an event; True if it is the network layer's to take."""
        counters = link.counters
        if isinstance(event, PairOk):
            counters.delivered += 1
            counters.fidelity_sum += event.fidelity_estimate
            counters.last_delivery_ns = event.estimate_time_ns
        elif isinstance(event, CreateErr):
            counters.errors += 1
        if isinstance(event, PairOk | CreateErr) and event.purpose >= NETWORK_PURPOSE_BASE:
            # A circuit's pair or error: the network layer's, not the link-layer users'.
            return True
        live = []
        for sub in link.subscribers:
            try:
                sub.send_nowait(event)
                live.append(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        link.subscribers = live
        if not live and isinstance(event, PairOk) and event.kind is Kind.KEEP and event.qubit:
            # Nobody will use this qubit: give it back rather than leak it.
            link.commands.send_nowait(Free(0, (event.qubit,)))
        return False

    def _link(self, peer: str) -> _Link:
        try:
            return self._links[peer]
        except KeyError:
            raise NotFound(f"{peer!r} is not a neighbour", node=self.name) from None


class _OneInput:
    """``NodeRuntime._one_input``: one object for every use, as a generator-based context
    manager costs a generator and two frames per executor batch."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: NodeRuntime) -> None:
        self._runtime = runtime

    def __enter__(self) -> None:
        self._runtime._holding += 1

    def __exit__(self, *exc: object) -> None:
        runtime = self._runtime
        runtime._holding -= 1
        runtime._balance_memory()


class _LinkCommands:
    """A link core's side of the node's executor (``executor.CommandOwner``)."""

    def __init__(self, runtime: NodeRuntime, peer: str) -> None:
        self._runtime = runtime
        self._peer = peer

    @property
    def _link(self) -> _Link:
        return self._runtime._links[self._peer]

    def operations(self, cmd: PhysicalCommand) -> Sequence[pb.Operation]:
        return cmd.ops if isinstance(cmd, _HostedOps) else operations(self._link.peer, cmd)

    def on_result(self, cmd: PhysicalCommand, result: pb.OperationResult, now: int) -> None:
        if isinstance(cmd, MeasureQubit):
            self._link.core.on_measured(cmd.tag, result.outcome, now)
        elif isinstance(cmd, _HostedOps):
            cmd.results.append(result)

    def on_failure(self, cmd: PhysicalCommand, failure: pb.OperationFailure, now: int) -> None:
        if isinstance(cmd, Arm) and failure.error_type == NoMemory.__name__:
            self._link.core.on_no_memory(now)
        elif isinstance(cmd, _HostedOps):
            node = self._runtime.name
            cmd.finish(error_from_wire(failure.error_type, failure.message, node=node))
        else:
            # E.g. a qubit freed under us by a racing disarm: say so, and go on.
            log.warning(
                "%s: %s on link to %s failed: %s",
                self._runtime.name,
                type(cmd).__name__,
                self._link.peer,
                failure.message,
            )

    def after_batch(self, cmds: list[PhysicalCommand], error: QnetError | None) -> None:
        for cmd in cmds:
            if isinstance(cmd, _HostedOps):
                cmd.finish(error or Unreachable("not run", node=self._runtime.name))
        self._runtime._flush(self._link)


class _AckCarrier:
    """The peer transport as the network layer's drivers see it: messages to a neighbour
    take along the acknowledgements its link core holds back (``EgpConfig.ack_delay_ns``),
    which would otherwise cost a gRPC message of their own."""

    def __init__(self, transport: PeerTransport, runtime: NodeRuntime) -> None:
        self._transport = transport
        self._runtime = runtime

    def send(self, peer: str, messages: Sequence[WireMessage]) -> None:
        link = self._runtime._links.get(peer)
        if link is not None:
            acks = link.core.take_acks(self._runtime.now())
            if acks:
                messages = [*messages, *acks]
        self._transport.send(peer, messages)

    def connected(self, peer: str) -> bool:
        return self._transport.connected(peer)

    async def run(
        self,
        deliver: Callable[[str, Sequence[WireMessage]], None],
        *,
        link_changed: Callable[[str, bool], None] | None = None,
        peer_restarted: Callable[[str], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The wrapped transport's (the node runs that one itself; this only completes the
        ``PeerTransport`` protocol)."""
        await self._transport.run(
            deliver,
            link_changed=link_changed,
            peer_restarted=peer_restarted,
            task_status=task_status,
        )


@dataclass(eq=False)
class _HostedOps(PhysicalCommand):
    """Operations of the layer above, run in a link's queue (``execute_on_link``)."""

    ops: tuple[pb.Operation, ...]
    results: list[pb.OperationResult | QnetError] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)

    def finish(self, error: QnetError) -> None:
        """Done: operations without a result yet get ``error`` (a failed one stops the rest)."""
        self.results += [error] * (len(self.ops) - len(self.results))
        self.done.set()
