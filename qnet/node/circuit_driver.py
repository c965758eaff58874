"""The node driver's side of circuits: one ``CircuitCore``, its inputs, outputs and handles.

``NodeRuntime`` owns one ``NodeCircuits``. It feeds it the neighbours' circuit messages, the
link layer's OKs and ERRs whose ``purpose`` is a circuit label, timer firings and neighbour
changes; this moves the core's outputs on: messages to the peer transport, link requests to
the runtime's link cores, physical commands (swaps, corrections, frees) to the node's executor
(``executor.py``: they share ``Execute`` requests with the links' commands), and deliveries
to ``CircuitHandle``s after the commands queued before them have run.

A ``CircuitHandle`` is the network-layer service the transport layer (and tests, and
benchmarks) use: ``open`` one towards a destination, or take one from ``incoming`` at the tail;
``receive`` end-to-end pairs in index order; ``close``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import trio

from qnet.errors import (
    NoMemory,
    PermissionDenied,
    ProtocolError,
    QnetError,
    Timeout,
    Unreachable,
    Unsupported,
)
from qnet.link.events import (
    CreateErr,
    CreateRequest,
    Free,
    MeasureQubit,
    PairOk,
    PhysicalCommand,
)
from qnet.network.circuit import CircuitConfig, CircuitCore
from qnet.network.circuit_events import (
    CircuitClosed,
    CircuitId,
    CircuitIncoming,
    CircuitMessage,
    CircuitOpened,
    CloseCode,
    EndToEndPair,
    LinkCancel,
    LinkCreate,
    ToPeer,
)
from qnet.node.executor import NodeExecutor
from qnet.node.interfaces import ChannelAccess, PeerTransport
from qnet.node.peer_wire import WireMessage
from qnet.node.physical_ops import operations
from qnet.runtime.clock import PhysicalClock
from qnet.topology import Topology
from qnet.v1 import channel_pb2 as pb

log = logging.getLogger("qnet.circuits")

_ERRORS: dict[CloseCode, type[QnetError]] = {
    CloseCode.UNREACHABLE: Unreachable,
    CloseCode.UNSUPPORTED: Unsupported,
    CloseCode.NO_MEMORY: NoMemory,
    CloseCode.TIMEOUT: Timeout,
    CloseCode.DENIED: PermissionDenied,
}


def closed_error(closed: CircuitClosed) -> QnetError | None:
    """The typed error a circuit's end stands for; None for a normal end."""
    cls = _ERRORS.get(closed.code)
    if cls is None:
        return None
    return cls(f"circuit {closed.circuit_id}: {closed.reason}", node=closed.node)


class CircuitHandle:
    """One end of a circuit. Pairs arrive in index order; their qubits are the receiver's.

    READY (for the transport driver): ``pause()``/``resume()`` stop and restart the
    circuit's pair generation on every node of the path; ``paused`` tells whether either end
    holds it paused. Semantics in ``pause``.
    """

    def __init__(
        self, owner: NodeCircuits, cid: CircuitId, path: tuple[str, ...], remote: str
    ) -> None:
        self._owner = owner
        self.id = cid
        self.path = path
        self.remote = remote
        self.opened = trio.Event()
        self.closed: CircuitClosed | None = None
        self.link_fidelity: tuple[float, ...] = ()
        self.cutoff_ns = 0
        self._send, self._recv = trio.open_memory_channel[EndToEndPair | CircuitClosed](math.inf)

    async def wait_open(self) -> None:
        """Wait for every hop to accept; raises the typed error of a refusal."""
        await self.opened.wait()
        if self.closed is not None:
            error = closed_error(self.closed)
            if error is not None:
                raise error

    async def receive(self) -> EndToEndPair:
        """The next end-to-end pair. When the circuit has ended: ``trio.EndOfChannel`` if it
        completed or was closed, else its typed error (Unreachable, Unsupported, …)."""
        try:
            event = await self._recv.receive()
        except trio.EndOfChannel:
            self._raise_end()
            raise
        if isinstance(event, CircuitClosed):
            self._raise_end()
            raise trio.EndOfChannel
        return event

    def _raise_end(self) -> None:
        if self.closed is not None:
            error = closed_error(self.closed)
            if error is not None:
                raise error

    def __aiter__(self) -> CircuitHandle:
        return self

    async def __anext__(self) -> EndToEndPair:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """End the circuit (both ends stop; what the nodes hold is freed)."""
        self._owner.close(self.id)

    def pause(self) -> None:
        """Stop generating pairs until this end calls ``resume``; never blocks.

        For a circuit whose user wants no pairs for now: otherwise every node on the path
        keeps making pairs that the ends then free, which costs each node CPU. Every node of
        the path withdraws its link requests for the circuit (a ``CircuitPause`` travels to
        the other end); the circuit stays open, with its reservations.

        - Pairs already made when the pause lands at a node still complete or are discarded
          as usual, so a few may still arrive here (``receive``) after ``pause``, at both ends
          alike, with consecutive indices. Nothing leaks; the ends stay in step.
        - Legal at either end, and idempotent; also on a circuit not open yet (it opens
          paused) or already ended (nothing happens).
        - Each end's pause is its own: the circuit generates while neither end holds it
          paused. So pause where the whole circuit's demand is known (for a transport
          connection, the allocating end, which hears the other end's demand), or pause at
          one end and resume at that same end.
        """
        self._owner.pause(self.id, True)

    def resume(self) -> None:
        """End this end's ``pause`` (idempotent): unless the other end holds the circuit
        paused, every node of the path asks its link for pairs again."""
        self._owner.pause(self.id, False)

    @property
    def paused(self) -> bool:
        """Whether either end holds the circuit paused, as this node last heard (the other
        end's pause or resume reaches here after its messages cross the path)."""
        return self._owner.core.is_paused(self.id)

    async def __aenter__(self) -> CircuitHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- driver side ---------------------------------------------------------------------------

    def _event(self, event: EndToEndPair | CircuitClosed) -> bool:
        """Queue an event; False if nobody will ever read it."""
        try:
            self._send.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


class NodeCircuits:
    def __init__(
        self,
        node: str,
        topology: Topology,
        channel: ChannelAccess,
        transport: PeerTransport,
        clock: PhysicalClock,
        *,
        executor: NodeExecutor,
        create: Callable[[str, CreateRequest], int],
        cancel: Callable[[str, int], object],
        config: CircuitConfig | None = None,
        on_output: Callable[[], None] = lambda: None,
    ) -> None:
        self.node = node
        self.core = CircuitCore(node, topology, config)
        self.channel = channel
        self.transport = transport
        self.clock = clock
        self._create = create
        self._cancel = cancel
        self._on_output = on_output
        self._handles: dict[CircuitId, CircuitHandle] = {}
        self._incoming_send, self._incoming = trio.open_memory_channel[CircuitHandle](math.inf)
        #: Swaps, corrections and frees share the node's Execute requests with its links'.
        self._commands = executor.queue(self, first=True)
        #: The latest link request per (peer, label), to cancel when the circuit ends.
        self._requests: dict[tuple[str, int], int] = {}
        self.protocol_errors = 0
        #: Called after every change of the core's state (tests and status wait on these).
        self.listeners: list[Callable[[], None]] = []
        #: (claims, take): incoming circuits a layer above claims (``claim_incoming``).
        self._claimants: list[
            tuple[Callable[[CircuitHandle], bool], Callable[[CircuitHandle], None]]
        ] = []

    # -- service -------------------------------------------------------------------------------

    def open(self, path: tuple[str, ...], min_fidelity: float, number: int = 0) -> CircuitHandle:
        """Start a circuit along ``path``; ``await handle.wait_open()`` for the answer."""
        cid = self.core.open(path, min_fidelity, number, self.clock.now_ns())
        handle = CircuitHandle(self, cid, path, path[-1])
        self._handles[cid] = handle
        self._flush()
        return handle

    def close(self, cid: CircuitId) -> None:
        if cid in self.core.circuits():
            self.core.close(cid, self.clock.now_ns())
            self._flush()

    def pause(self, cid: CircuitId, paused: bool) -> None:
        """``CircuitHandle.pause``/``resume``; nothing once the circuit has ended here."""
        if cid not in self.core.circuits():
            return
        if paused:
            self.core.pause(cid, self.clock.now_ns())
        else:
            self.core.resume(cid, self.clock.now_ns())
        self._flush()

    @property
    def incoming(self) -> trio.MemoryReceiveChannel[CircuitHandle]:
        """Circuits that end at this node, as they are accepted, except those a claimant
        took (``claim_incoming``)."""
        return self._incoming

    def claim_incoming(
        self, claims: Callable[[CircuitHandle], bool], take: Callable[[CircuitHandle], None]
    ) -> None:
        """Route the incoming circuits ``claims`` says are its own to ``take`` instead of
        ``incoming`` (the transport layer takes those of its connections' handshakes)."""
        self._claimants.append((claims, take))

    # -- inputs --------------------------------------------------------------------------------

    def on_messages(self, sender: str, messages: Sequence[WireMessage]) -> None:
        now = self.clock.now_ns()
        for message in messages:
            assert isinstance(message, CircuitMessage)  # the runtime dispatches by family
            try:
                self.core.on_message(sender, message, now)
            except (ProtocolError, QnetError, ValueError) as exc:
                self.protocol_errors += 1
                log.warning("%s: circuit message from %s refused: %s", self.node, sender, exc)
        self._flush()

    def on_link_event(self, peer: str, event: PairOk | CreateErr) -> None:
        now = self.clock.now_ns()
        if isinstance(event, PairOk):
            self.core.on_link_pair(peer, event, event.weights, now)
        else:
            self.core.on_link_error(peer, event, now)
        self._flush()

    def link_changed(self, peer: str, up: bool) -> None:
        now = self.clock.now_ns()
        if up:
            self.core.link_up(peer, now)
        else:
            self.core.link_down(peer, now)
        self._flush()

    def on_timer(self, now: int) -> None:
        self.core.on_timer(now)
        self._flush()

    def next_deadline(self) -> int | None:
        return self.core.next_deadline()

    # -- outputs -------------------------------------------------------------------------------

    def _flush(self) -> None:
        messages: dict[str, list[WireMessage]] = {}
        for out in self.core.pop_outputs():
            if isinstance(out, ToPeer):
                messages.setdefault(out.peer, []).append(out.message)
            elif isinstance(out, PhysicalCommand):
                self._commands.send_nowait(out)
            elif isinstance(out, EndToEndPair | CircuitClosed):
                # After the commands before it: a pair's correction gates must have run when
                # its user gets it, and a circuit ends after its last pair.
                self._commands.send_nowait(_Deliver(out))
            elif isinstance(out, LinkCreate):
                self._link_create(out.request)
            elif isinstance(out, LinkCancel):
                create_id = self._requests.pop((out.peer, out.purpose), None)
                if out.create_id is not None:
                    create_id = out.create_id
                if create_id is not None:
                    self._cancel(out.peer, create_id)
            else:
                self._deliver(out)
        for peer, batch in messages.items():
            self.transport.send(peer, batch)
        self._on_output()
        for listener in self.listeners:
            listener()

    def _link_create(self, request: CreateRequest) -> None:
        try:
            create_id = self._create(request.remote, request)
        except QnetError as exc:
            # The core sees this like any link error: it retries, or ends the circuit.
            log.warning("%s: link request to %s refused: %s", self.node, request.remote, exc)
            return
        self._requests[(request.remote, request.purpose)] = create_id

    def _deliver(self, event: object) -> None:
        if isinstance(event, CircuitIncoming):
            handle = CircuitHandle(self, event.circuit_id, event.path, event.path[0])
            handle.opened.set()
            self._handles[event.circuit_id] = handle
            for claims, take in self._claimants:
                if claims(handle):
                    take(handle)
                    return
            self._incoming_send.send_nowait(handle)
        elif isinstance(event, CircuitOpened):
            handle = self._handles[event.circuit_id]
            handle.link_fidelity = event.link_fidelity
            handle.cutoff_ns = event.cutoff_ns
            handle.opened.set()
        elif isinstance(event, EndToEndPair):
            found = self._handles.get(event.circuit_id)
            if found is None or not found._event(event):
                self._commands.send_nowait(_free(event.qubit))
        elif isinstance(event, CircuitClosed):
            closing = self._handles.pop(event.circuit_id, None)
            if closing is not None:
                closing.closed = event
                closing.opened.set()
                closing._event(event)
                closing._send.close()

    # -- physical commands (``executor.CommandOwner``) -----------------------------------------

    def operations(self, cmd: PhysicalCommand) -> Sequence[pb.Operation]:
        return () if isinstance(cmd, _Deliver) else operations("", cmd)

    def on_result(self, cmd: PhysicalCommand, result: pb.OperationResult, now: int) -> None:
        if isinstance(cmd, MeasureQubit):
            self.core.on_measured(cmd.tag, result.outcome, now)

    def on_failure(self, cmd: PhysicalCommand, failure: pb.OperationFailure, now: int) -> None:
        log.warning(
            "%s: %s for a circuit failed: %s", self.node, type(cmd).__name__, failure.message
        )
        if isinstance(cmd, MeasureQubit):
            # The swap can never complete: treat it like a lost outcome.
            self.core.on_measured(cmd.tag, -1, now)

    def after_batch(self, cmds: list[PhysicalCommand], error: QnetError | None) -> None:
        """The request with ``cmds`` ran: hand out the deliveries queued behind them."""
        for cmd in cmds:
            if isinstance(cmd, _Deliver):
                self._deliver(cmd.event)
        self._flush()


@dataclass(frozen=True, slots=True)
class _Deliver(PhysicalCommand):
    """A delivery held in the command queue until the commands before it have run."""

    event: EndToEndPair | CircuitClosed


def _free(qubit: int) -> PhysicalCommand:
    return Free(0, (qubit,))
