"""The node driver: one per node, the same code in a daemon and in ``qnet.sim``.

It owns the node's layer cores (one EGP core per link now) and moves their inputs and outputs:
heralds from the channel backend, messages from neighbours, timers, and requests from above go
in; peer messages go to the transport, physical commands to one executor task per link (so a
link's commands run in the order the core issued them), and deliveries to subscribers. The
cores never wait; only this driver does.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import trio

from qnet.channel import wire
from qnet.errors import NoMemory, NotFound, ProtocolError, QnetError, Unreachable
from qnet.link.egp import EgpConfig, EgpCore
from qnet.link.events import (
    Arm,
    CreateErr,
    CreateRequest,
    Disarm,
    Free,
    Gates,
    Kind,
    MeasureQubit,
    PairOk,
    PeerMessage,
    PhysicalCommand,
    UpperEvent,
)
from qnet.node.interfaces import ChannelAccess, PeerTransport
from qnet.physical.events import HeraldEvent
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
    commands: trio.MemorySendChannel[PhysicalCommand]
    pending: trio.MemoryReceiveChannel[PhysicalCommand]
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
        self._wake = trio.Event()
        self.ready = trio.Event()
        self.protocol_errors = 0

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

    def subscribe(self, peer: str) -> trio.MemoryReceiveChannel[UpperEvent]:
        """Every OK and ERR of the link to ``peer`` from now on, whoever asked. KEEP pairs'
        qubits become the subscriber's to use and free."""
        send, recv = trio.open_memory_channel[UpperEvent](math.inf)
        self._link(peer).subscribers.append(send)
        return recv

    def counters(self, peer: str) -> LinkCounters:
        return self._link(peer).counters

    def memory_in_use(self) -> int:
        """Qubits the link layer holds (armed or waiting for the peer or a purification)."""
        return sum(len(link.core.pairs) + link.core.armed for link in self._links.values())

    # -- driver --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rng = random.Random(f"{self._seed}:{self.name}")
        for spec in self.topology.links_of(self.name):
            peer = spec.other(self.name)
            await self.channel.declare_link(peer, spec.params)
            config = EgpConfig(
                node=self.name,
                peer=peer,
                link=spec.params,
                local=self.spec.params,
                remote=self.topology.node(peer).params,
                rto_ns=self._rto_ns,
                latency_ns=self._latency_ns,
            )
            send, recv = trio.open_memory_channel[PhysicalCommand](math.inf)
            core = EgpCore(config, rng=random.Random(rng.random()))
            self._links[peer] = _Link(peer, core, send, recv)
        async with self.channel.heralds() as heralds, trio.open_nursery() as nursery:
            await nursery.start(self.transport.run, self._on_messages)
            for link in self._links.values():
                nursery.start_soon(self._execute, link)
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

    def _on_messages(self, sender: str, messages: Sequence[PeerMessage]) -> None:
        link = self._links.get(sender)
        if link is None:
            self.protocol_errors += 1
            log.warning(
                "%s: %d messages from %s, not a neighbour", self.name, len(messages), sender
            )
            return
        now = self.now()
        for msg in messages:
            try:
                link.core.on_message(msg, now)
            except (ProtocolError, QnetError) as exc:
                # A peer that breaks the protocol loses its message, never the daemon.
                self.protocol_errors += 1
                log.warning("%s: message from %s refused: %s", self.name, sender, exc)
        self._flush(link)

    async def _timers(self) -> None:
        while True:
            self._wake = trio.Event()
            deadlines = [
                (d, link)
                for link in self._links.values()
                if (d := link.core.next_deadline()) is not None
            ]
            if not deadlines:
                await self._wake.wait()
                continue
            deadline = min(d for d, _ in deadlines)
            with trio.move_on_at(self.clock.trio_time(deadline)):
                await self._wake.wait()
            now = self.now()
            for d, link in deadlines:
                if d <= now:
                    link.core.on_timer(now)
                    self._flush(link)

    def _flush(self, link: _Link) -> None:
        """Move a core's outputs to where they go; never blocks."""
        messages: list[PeerMessage] = []
        for out in link.core.pop_outputs():
            if isinstance(out, PeerMessage):
                messages.append(out)
            elif isinstance(out, PhysicalCommand):
                link.commands.send_nowait(out)
            else:
                self._deliver(link, out)
        if messages:
            self.transport.send(link.peer, messages)
        self._wake.set()

    def _deliver(self, link: _Link, event: UpperEvent) -> None:
        counters = link.counters
        if isinstance(event, PairOk):
            counters.delivered += 1
            counters.fidelity_sum += event.fidelity_estimate
            counters.last_delivery_ns = event.estimate_time_ns
        elif isinstance(event, CreateErr):
            counters.errors += 1
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

    async def _execute(self, link: _Link) -> None:
        """Run the link's physical commands in order, feeding results back to its core.

        Whatever queued up while the previous batch ran goes to the backend as one Execute
        request: per-call cost dominates, so the busier the link, the larger the batches.
        """
        while True:
            commands = [await link.pending.receive()]
            while True:
                try:
                    commands.append(link.pending.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self._run_batch(link, commands)
            except QnetError as exc:
                log.error(
                    "%s: backend request for link to %s failed: %s", self.name, link.peer, exc
                )
            self._flush(link)

    async def _run_batch(self, link: _Link, commands: list[PhysicalCommand]) -> None:
        ops: list[pb.Operation] = []
        owners: list[PhysicalCommand] = []
        for cmd in commands:
            for op in _operations(link.peer, cmd):
                ops.append(op)
                owners.append(cmd)
        start = 0
        while start < len(ops):
            resp = await self.channel.execute(ops[start:])
            now = self.now()
            for i, result in enumerate(resp.results):
                cmd = owners[start + i]
                if isinstance(cmd, MeasureQubit):
                    link.core.on_measured(cmd.tag, result.outcome, now)
            if not resp.HasField("failure"):
                return
            failed = start + resp.failure.index
            cmd = owners[failed]
            if isinstance(cmd, Arm) and resp.failure.error_type == NoMemory.__name__:
                link.core.on_no_memory(now)
            else:
                # E.g. a qubit freed under us by a racing disarm: say so, and go on.
                log.warning(
                    "%s: %s on link to %s failed: %s",
                    self.name,
                    type(cmd).__name__,
                    link.peer,
                    resp.failure.message,
                )
            start = failed + 1
            while start < len(ops) and owners[start] is cmd:
                start += 1  # the rest of a failed command's operations would act on bad state

    def _link(self, peer: str) -> _Link:
        try:
            return self._links[peer]
        except KeyError:
            raise NotFound(f"{peer!r} is not a neighbour", node=self.name) from None


def _operations(peer: str, cmd: PhysicalCommand) -> list[pb.Operation]:
    """The backend operations that carry out one EGP physical command."""
    if isinstance(cmd, Arm):
        return [
            pb.Operation(
                arm=pb.ArmOp(peer=peer, allocate=cmd.count, bright_state=cmd.bright_state or 0.0)
            )
        ]
    if isinstance(cmd, Disarm):
        return [pb.Operation(disarm=pb.DisarmOp(peer=peer, free=True))]
    if isinstance(cmd, MeasureQubit):
        basis = wire.BASIS_TO_WIRE[cmd.basis]
        return [pb.Operation(measure=pb.MeasureOp(qubit=cmd.qubit, basis=basis))]
    if isinstance(cmd, Gates):
        return [
            pb.Operation(gate=pb.GateOp(gate=wire.GATE_TO_WIRE[gate], qubits=qubits, angle=angle))
            for gate, qubits, angle in cmd.ops
        ]
    if isinstance(cmd, Free):
        return [pb.Operation(free=pb.FreeOp(qubits=cmd.qubits))]
    raise AssertionError(f"unknown physical command {cmd!r}")
