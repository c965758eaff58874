"""The node driver's side of the transport layer: one ``TransportCore``, its inputs and outputs.

``NodeRuntime`` owns one ``NodeTransport`` (``runtime.transport_layer``). It moves the core's
inputs and outputs (see the driver contract in ``qnet.transport``):

- messages: each ``SendTo`` travels alone as a network datagram of protocol ``PROTOCOL`` (1),
  its payload the serialized ``PeerMessage`` (``peer_wire``); datagrams of that protocol go to
  ``on_message``. A payload that does not decode, or a message the core refuses, is counted
  (``protocol_errors``) and dropped. A datagram without a route now (NotConverged,
  Unreachable) is dropped and logged: the core retransmits, and gives up with ``Timeout``.
- circuits: ``OpenCircuit`` opens one with ``runtime.open_circuit`` and answers
  ``on_circuit_open``/``on_circuit_failed`` from a task; circuits ending here are claimed from
  ``NodeCircuits`` (``claim_incoming``) when their head is a node with which an accepted
  connection waits for its circuit (SYN_RECEIVED); every other incoming circuit stays on
  ``runtime.circuits.incoming`` for the NetworkLayer service. Each claimed or opened circuit's
  pairs go to ``on_pair`` in index order, its end to ``on_circuit_closed``.
  ``PauseCircuit``/``ResumeCircuit`` (from the accepting end, which knows both ends' demand)
  pause and resume its generation (``CircuitHandle.pause``): an idle connection costs the
  nodes of its path nothing.
- physical commands run in order in one executor task, batched into ``Execute`` calls, and
  events the core emitted after a command reach the application only after it ran.
- events go to the application API (``qnet.sockets``) through ``subscribe``.
- memory: the qubits the core holds (``held_count``) count against the node's memory; a
  change re-shares it between the links (``runtime.memory_changed``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from google.protobuf.message import DecodeError

from qnet.channel import wire
from qnet.errors import ProtocolError, QnetError
from qnet.network.circuit_events import CircuitId, CloseCode
from qnet.node import peer_wire
from qnet.node.circuit_driver import CircuitHandle
from qnet.physical.gates import Basis, GateName
from qnet.transport import TransportConfig, TransportCore
from qnet.transport.events import (
    BellMeasure,
    CloseCircuit,
    Correct,
    Free,
    MeasurePair,
    OpenCircuit,
    Output,
    PauseCircuit,
    PhysicalCommand,
    ResumeCircuit,
    SendTo,
    TransportEvent,
    TransportMessage,
)
from qnet.transport.states import ConnState
from qnet.v1 import channel_pb2 as pb
from qnet.v1 import peer_pb2

if TYPE_CHECKING:
    from qnet.node.runtime import NodeRuntime
    from qnet.sockets import Socket, Sockets

log = logging.getLogger("qnet.transport")

#: The datagram protocol number of the transport layer.
PROTOCOL = 1


@dataclass(frozen=True, slots=True)
class _Deliver:
    """An event held in the command queue until the commands before it have run."""

    event: TransportEvent


class NodeTransport:
    def __init__(
        self,
        runtime: NodeRuntime,
        *,
        config: TransportConfig | None = None,
        close_circuit: Callable[[CircuitId], None],
        on_output: Callable[[], None] = lambda: None,
    ) -> None:
        self.node = runtime.name
        self._runtime = runtime
        self.clock = runtime.clock
        # A restarted node must not reuse connection ids its peers may still know.
        self.core = TransportCore(
            self.node, config, first_conn_id=max(1, self.clock.now_ns() // 1000)
        )
        self._close_circuit = close_circuit
        self._on_output = on_output
        self._datagrams = runtime.listen_datagrams(PROTOCOL)
        self._commands, self._pending = trio.open_memory_channel[PhysicalCommand | _Deliver](
            math.inf
        )
        self._nursery: trio.Nursery | None = None
        #: Application API: who takes the events.
        self._subscribers: list[Callable[[TransportEvent], None]] = []
        self._progress = trio.Event()
        self._sockets: Sockets | None = None
        self.protocol_errors = 0
        self.dropped_sends = 0
        #: ``core.held_count()`` when the node's memory was last re-shared.
        self._held = 0
        #: The circuits whose pairs are pumped into the core, for ``PauseCircuit``.
        self._handles: dict[CircuitId, CircuitHandle] = {}

    def now(self) -> int:
        return self.clock.now_ns()

    @property
    def default_min_fidelity(self) -> float:
        """A connection's end-to-end fidelity target when its application names none: the
        threshold the network's routing costs links at. Without it a connection would get the
        fastest pairs the links can make, which on a few hops are barely entangled."""
        return self._runtime.topology.routing.fidelity_threshold

    def socket(self) -> Socket:
        """A new socket of this node's transport layer (``qnet.sockets``)."""
        if self._sockets is None:
            from qnet.sockets import Sockets

            self._sockets = Sockets(self, self._runtime.channel)
        return self._sockets.socket()

    async def progress(self) -> None:
        """Wait until the core's outputs moved on again (a socket's send waits on this)."""
        await self._progress.wait()

    def free(self, qubits: tuple[int, ...]) -> None:
        """Free qubits in order with the core's own commands."""
        self._commands.send_nowait(Free(0, qubits))

    def subscribe(self, deliver: Callable[[TransportEvent], None]) -> None:
        self._subscribers.append(deliver)

    # -- claims on incoming circuits ---------------------------------------------------------------

    def claims(self, handle: CircuitHandle) -> bool:
        """True for a circuit whose head has an accepted connection here waiting for one."""
        head = handle.id[0]
        return any(
            self.core.connection(cid).remote == head
            for cid, state in self.core.connections().items()
            if state is ConnState.SYN_RECEIVED
        )

    def take_incoming(self, handle: CircuitHandle) -> None:
        self._start(self._pump_pairs, handle)

    # -- running -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._execute)
            nursery.start_soon(self._receive_datagrams)
            task_status.started()

    def _start(self, fn: Callable[[CircuitHandle], object], handle: CircuitHandle) -> None:
        assert self._nursery is not None, "NodeTransport.run has not started"
        self._nursery.start_soon(fn, handle)  # type: ignore[arg-type]

    async def _receive_datagrams(self) -> None:
        async for datagram in self._datagrams:
            try:
                message = peer_wire.from_wire(peer_pb2.PeerMessage.FromString(datagram.payload))
                if not isinstance(message, TransportMessage):
                    raise ProtocolError(f"{type(message).__name__} is not a transport message")
            except (ProtocolError, DecodeError, ValueError) as exc:
                self.protocol_errors += 1
                log.warning(
                    "%s: transport datagram from %s refused: %s", self.node, datagram.source, exc
                )
                continue
            self.call(self.core.on_message, datagram.source, message, self.now())

    def call(self, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Feed the core one input from the peer or below; a refusal is counted, never fatal."""
        try:
            fn(*args, **kwargs)
        except QnetError as exc:
            self.protocol_errors += 1
            log.warning("%s: transport core refused an input: %s", self.node, exc)
        finally:
            self.flush()

    # -- outputs -----------------------------------------------------------------------------------

    def flush(self) -> None:
        while outputs := self.core.pop_outputs():
            self._place(outputs)
        self._progress.set()
        self._progress = trio.Event()
        self._on_output()
        # Pairs the core buffers and qubits waiting to be teleported fill the node's memory
        # like the link layers' own: the links must arm for what is left.
        held = self.core.held_count()
        if held != self._held:
            self._held = held
            self._runtime.memory_changed()

    def _place(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, SendTo):
                self._send(out)
            elif isinstance(out, PhysicalCommand):
                self._commands.send_nowait(out)
            elif isinstance(out, OpenCircuit):
                self._open(out)
            elif isinstance(out, CloseCircuit):
                self._close_circuit(out.circuit)
            elif isinstance(out, PauseCircuit | ResumeCircuit):
                handle = self._handles.get(out.circuit)
                if handle is not None:  # else it ended meanwhile: nothing to pause
                    if isinstance(out, PauseCircuit):
                        handle.pause()
                    else:
                        handle.resume()
            else:
                assert isinstance(out, TransportEvent)
                self._commands.send_nowait(_Deliver(out))

    def _send(self, out: SendTo) -> None:
        payload = peer_wire.to_wire(out.message).SerializeToString()
        try:
            self._runtime.send_datagram(out.node, PROTOCOL, payload)
        except QnetError as exc:
            # No route now: the core retransmits records and handshakes, and gives up in time.
            self.dropped_sends += 1
            log.info("%s: transport message to %s dropped: %s", self.node, out.node, exc)

    def _open(self, out: OpenCircuit) -> None:
        try:
            handle = self._runtime.open_circuit(out.remote, min_fidelity=out.min_fidelity)
        except QnetError as exc:
            node = exc.node or self.node
            try:
                self.core.on_circuit_failed(
                    out.conn, CloseCode.UNREACHABLE, str(exc), self.now(), node=node
                )
            except QnetError as refused:
                log.warning("%s: transport core refused an input: %s", self.node, refused)
            return  # the flush we are in moves the outputs on
        assert self._nursery is not None
        self._nursery.start_soon(self._wait_open, out.conn, handle)

    async def _wait_open(self, conn: int, handle: CircuitHandle) -> None:
        await handle.opened.wait()
        closed = handle.closed
        if closed is not None and closed.code not in (CloseCode.COMPLETED, CloseCode.CLOSED):
            self.call(
                self.core.on_circuit_failed,
                conn,
                closed.code,
                closed.reason,
                self.now(),
                node=closed.node,
            )
            return
        self.call(self.core.on_circuit_open, conn, handle.id, self.now())
        await self._pump_pairs(handle)

    async def _pump_pairs(self, handle: CircuitHandle) -> None:
        self._handles[handle.id] = handle
        try:
            await self._pump(handle)
        finally:
            del self._handles[handle.id]

    async def _pump(self, handle: CircuitHandle) -> None:
        while True:
            try:
                pair = await handle.receive()
            except (trio.EndOfChannel, QnetError):
                break
            self.call(
                self.core.on_pair,
                handle.id,
                pair.index,
                pair.qubit,
                pair.fidelity_estimate,
                self.now(),
            )
        closed = handle.closed
        code = closed.code if closed is not None else CloseCode.CLOSED
        reason = closed.reason if closed is not None else "closed"
        node = closed.node if closed is not None else self.node
        self.call(self.core.on_circuit_closed, handle.id, code, reason, self.now(), node=node)

    # -- timers ------------------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        return self.core.next_deadline()

    def on_timer(self, now: int) -> None:
        self.call(self.core.on_timer, now)

    # -- physical commands -------------------------------------------------------------------------

    async def _execute(self) -> None:
        while True:
            commands = [await self._pending.receive()]
            while True:
                try:
                    commands.append(self._pending.receive_nowait())
                except trio.WouldBlock:
                    break
            # Run the commands up to each delivery, then the delivery: events the core
            # emitted after a command reach the application after it ran.
            batch: list[PhysicalCommand] = []
            for cmd in commands:
                if isinstance(cmd, _Deliver):
                    if batch:
                        await self._run_batch(batch)
                        batch = []
                    for deliver in self._subscribers:
                        deliver(cmd.event)
                else:
                    batch.append(cmd)
            if batch:
                await self._run_batch(batch)
            self.flush()

    async def _run_batch(self, commands: list[PhysicalCommand]) -> None:
        ops: list[pb.Operation] = []
        owners: list[PhysicalCommand] = []
        for cmd in commands:
            for op in _operations(cmd):
                ops.append(op)
                owners.append(cmd)
        outcomes: dict[int, list[int]] = {}
        failed_cmds: set[int] = set()
        start = 0
        while start < len(ops):
            try:
                resp = await self._runtime.channel.execute(ops[start:])
            except QnetError as exc:
                log.error("%s: transport commands failed: %s", self.node, exc)
                failed_cmds.update(id(c) for c in owners[start:])
                break
            for i, result in enumerate(resp.results):
                if ops[start + i].HasField("measure"):
                    outcomes.setdefault(id(owners[start + i]), []).append(result.outcome)
            if not resp.HasField("failure"):
                break
            failed = start + resp.failure.index
            cmd = owners[failed]
            log.warning(
                "%s: %s for a connection failed: %s",
                self.node,
                type(cmd).__name__,
                resp.failure.message,
            )
            failed_cmds.add(id(cmd))
            start = failed + 1
            while start < len(ops) and owners[start] is cmd:
                start += 1
        now = self.now()
        for cmd in commands:
            if isinstance(cmd, BellMeasure | MeasurePair):
                got = () if id(cmd) in failed_cmds else tuple(outcomes.get(id(cmd), ()))
                self.call(self.core.on_measured, cmd.tag, got, now)


def _operations(cmd: PhysicalCommand) -> list[pb.Operation]:
    def gate(name: GateName, *qubits: int) -> pb.Operation:
        return pb.Operation(gate=pb.GateOp(gate=wire.GATE_TO_WIRE[name], qubits=qubits))

    def measure(qubit: int, basis: Basis = Basis.Z) -> pb.Operation:
        return pb.Operation(measure=pb.MeasureOp(qubit=qubit, basis=wire.BASIS_TO_WIRE[basis]))

    if isinstance(cmd, BellMeasure):
        return [
            gate(GateName.CNOT, cmd.qubit, cmd.pair_qubit),
            gate(GateName.H, cmd.qubit),
            measure(cmd.qubit),
            measure(cmd.pair_qubit),
        ]
    if isinstance(cmd, MeasurePair):
        return [measure(cmd.qubit, cmd.basis)]
    if isinstance(cmd, Correct):
        ops = [gate(GateName.X, cmd.qubit)] if cmd.x else []
        return ops + ([gate(GateName.Z, cmd.qubit)] if cmd.z else [])
    if isinstance(cmd, Free):
        return [pb.Operation(free=pb.FreeOp(qubits=cmd.qubits))] if cmd.qubits else []
    raise AssertionError(f"unknown transport command {cmd!r}")
