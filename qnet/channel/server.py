"""The channel backend's driver: sessions, the herald timer and the Channel API handlers.

It owns one ``ChannelCore`` and moves its inputs and outputs: requests come in through the
handlers below (async, run in the trio thread by the gRPC bridge), heralds go out through one
event queue per session, and one timer task advances the core to each herald's physical time.
Everything here runs in one trio thread, so the core needs no lock.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import trio

from qnet.channel import wire
from qnet.channel.wire import PROTOCOL_VERSION, check_version
from qnet.errors import AlreadyExists, InvalidArgument, QnetError, Unauthenticated
from qnet.physical.channel_core import ChannelCore
from qnet.physical.events import HeraldEvent
from qnet.runtime.alarm import Wakeup
from qnet.runtime.clock import PhysicalClock
from qnet.runtime.grpc_service import Malformed, malformed_error
from qnet.security.identity import require_node
from qnet.v1 import channel_pb2 as pb

log = logging.getLogger("qnet.channeld")

#: Operations one Execute request may carry.
MAX_OPERATIONS = 10_000
#: Wall-clock seconds a session that had an event stream may go without one (and without a
#: request) before the backend ends it and frees its qubits: a node daemon holds its stream for
#: its whole life, so a stream that broke and stays closed is a daemon that died (kill -9).
ORPHAN_LEASE_S = 1.0


@dataclass(eq=False)
class _Session:
    token: str
    node: str
    # Heralds are bounded by the armed qubits, themselves bounded by memory, so the queue is
    # unbounded by construction rather than by a size that could drop a herald.
    send: trio.MemorySendChannel[pb.Event]
    recv: trio.MemoryReceiveChannel[pb.Event]
    streaming: bool = False
    ended: bool = False
    #: An in-process stream's sink (``stream_locally``): heralds as the core made them.
    local: Callable[[HeraldEvent | None], None] | None = None
    #: trio time its event stream closed while the session lived (None: open, or never had one).
    orphaned_at: float | None = None


class ChannelServer:
    """The Channel API over one physical core. Create and ``run`` it inside trio."""

    def __init__(
        self, core: ChannelCore, clock: PhysicalClock, *, authenticate: bool = False
    ) -> None:
        self.core = core
        self.clock = clock
        #: TLS is on: each request comes from a node's certificate (``identity.caller()``),
        #: and a node may register, and use a session, only as itself.
        self.authenticate = authenticate
        self._sessions: dict[str, _Session] = {}
        self._by_node: dict[str, _Session] = {}
        #: The timer task's sleep while it sleeps: its deadline is the next herald's (or
        #: orphan lease's) time, and requests move it rather than wake the task, so a
        #: request that schedules nothing earlier costs no task switch.
        self._wakeup = Wakeup()
        #: (herald time in ns, its trio time) of the last conversion: most requests leave
        #: the next herald where it was.
        self._wake_memo: tuple[int | None, float] = (None, math.inf)
        #: Sessions whose event stream closed (see ORPHAN_LEASE_S).
        self._orphans: set[_Session] = set()

    # -- driver loop ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advance the core to each herald's time and deliver the heralds; runs until
        cancelled."""
        task_status.started()
        while True:
            await self._wakeup.until(self._wake_at())
            self._end_orphans()
            self.core.advance(max(self.clock.now_ns(), self.core.now))
            self._dispatch()

    def _wake_at(self) -> float:
        """Trio time the timer task must wake at: the next herald, or an orphan's lease."""
        deadline = self.core.next_deadline()
        memo = self._wake_memo
        if deadline != memo[0]:
            at = self.clock.trio_time(deadline) if deadline is not None else math.inf
            memo = self._wake_memo = (deadline, at)
        return min(memo[1], self._lease_deadline()) if self._orphans else memo[1]

    def _reschedule(self) -> None:
        sleep = self._wakeup.sleep
        if sleep is not None:
            at = self._wake_at()
            if at != sleep.deadline:
                sleep.deadline = at

    def _now(self) -> int:
        # Physical time never runs backwards even if the float conversion wobbles.
        return max(self.clock.now_ns(), self.core.now)

    def _dispatch(self) -> None:
        for event in self.core.pop_events():
            session = self._by_node.get(event.node)
            if session is None:
                continue
            if session.local is not None:
                session.local(event)
            else:
                session.send.send_nowait(wire.herald_to_wire(event))

    def _after_request(self) -> None:
        """Deliver what the request caused and let the timer pick up a new schedule."""
        self._dispatch()
        self._reschedule()

    def _session(self, token: str) -> _Session:
        session = self._sessions.get(token)
        if session is None:
            raise Unauthenticated("unknown or ended session; register the node first")
        if self.authenticate:
            require_node(session.node, what=f"use the session of node {session.node}")
        if session.orphaned_at is not None:
            session.orphaned_at = trio.current_time()  # a request renews the lease
        return session

    def _lease_deadline(self) -> float:
        return min(
            (s.orphaned_at + ORPHAN_LEASE_S for s in self._orphans if s.orphaned_at is not None),
            default=float("inf"),
        )

    def _end_orphans(self) -> None:
        now = trio.current_time()
        for session in list(self._orphans):
            if session.ended or session.orphaned_at is None:
                self._orphans.discard(session)
            elif now >= session.orphaned_at + ORPHAN_LEASE_S:
                self._orphans.discard(session)
                log.warning(
                    "node %s: its event stream closed %.1f s ago and it has not come back;"
                    " ending its session and freeing its %d qubits",
                    session.node,
                    now - session.orphaned_at,
                    self.core.memory_in_use(session.node),
                )
                self.core.unregister_node(session.node, self._now())
                self._end_session(session, "the node's event stream closed and stayed closed")
                self._dispatch()

    def _end_session(self, session: _Session, reason: str) -> None:
        session.ended = True
        del self._sessions[session.token]
        if self._by_node.get(session.node) is session:
            del self._by_node[session.node]
        ended = pb.Event(
            protocol_version=PROTOCOL_VERSION,
            time_ns=self._now(),
            session_ended=pb.SessionEnded(reason=reason),
        )
        session.send.send_nowait(ended)
        session.send.close()
        if session.local is not None:
            session.local(None)

    def end_session(self, token: str, reason: str) -> None:
        """End a session and forget its node: generation stops, its qubits are freed, its
        event stream ends with ``SessionEnded``. What a crashed daemon's registration comes
        to; in-process only (``qnet.sim`` stops nodes with it), not a Channel API call."""
        session = self._session(token)
        self.core.unregister_node(session.node, self._now())
        self._end_session(session, reason)
        self._after_request()

    # -- handlers ------------------------------------------------------------------------

    async def register(self, req: pb.RegisterRequest) -> pb.RegisterResponse:
        check_version(req)
        if self.authenticate:
            require_node(req.node, what=f"register as node {req.node}")
        params = wire.node_params_from_wire(req.memory_qubits, req.noise)
        now = self._now()
        old = self._by_node.get(req.node)
        if old is not None:
            if not req.takeover:
                raise AlreadyExists(
                    f"node {req.node} is already registered; set takeover to replace it"
                )
            self.core.unregister_node(req.node, now)
            self._end_session(old, "taken over by a new registration")
        self.core.register_node(req.node, params, now)
        send, recv = trio.open_memory_channel[pb.Event](float("inf"))
        token = secrets.token_hex(16)
        session = _Session(token, req.node, send, recv)
        self._sessions[token] = session
        self._by_node[req.node] = session
        log.info("registered node %s (%d memory qubits)", req.node, params.memory_qubits)
        self._after_request()
        return pb.RegisterResponse(protocol_version=PROTOCOL_VERSION, session=token, now_ns=now)

    async def declare_link(self, req: pb.DeclareLinkRequest) -> pb.DeclareLinkResponse:
        check_version(req)
        node = self._session(req.session).node
        params = wire.link_params_from_wire(req.params)
        model = self.core.declare_link(node, req.peer, params, self._now())
        self._after_request()
        return pb.DeclareLinkResponse(
            protocol_version=PROTOCOL_VERSION,
            theory=wire.theory_to_wire(model),
            last_sequence=self.core.link_sequence(node, req.peer),
        )

    async def allocate(self, req: pb.AllocateRequest) -> pb.AllocateResponse:
        check_version(req)
        node = self._session(req.session).node
        qubits = self.core.allocate(node, req.count, self._now())
        self._after_request()
        return pb.AllocateResponse(protocol_version=PROTOCOL_VERSION, qubits=qubits)

    async def free(self, req: pb.FreeRequest) -> pb.FreeResponse:
        check_version(req)
        node = self._session(req.session).node
        self.core.free(node, list(req.qubits), self._now())
        self._after_request()
        return pb.FreeResponse(protocol_version=PROTOCOL_VERSION)

    async def apply_gate(self, req: pb.GateRequest) -> pb.GateResponse:
        check_version(req)
        node = self._session(req.session).node
        gate = wire.gate_from_wire(req.gate)
        self.core.apply_gate(node, gate, list(req.qubits), req.angle, self._now())
        self._after_request()
        return pb.GateResponse(protocol_version=PROTOCOL_VERSION)

    async def measure(self, req: pb.MeasureRequest) -> pb.MeasureResponse:
        check_version(req)
        node = self._session(req.session).node
        basis = wire.basis_from_wire(req.basis)
        outcome = self.core.measure(node, req.qubit, basis, self._now(), keep=req.keep)
        self._after_request()
        return pb.MeasureResponse(protocol_version=PROTOCOL_VERSION, outcome=outcome)

    async def bell_measure(self, req: pb.BellMeasureRequest) -> pb.BellMeasureResponse:
        check_version(req)
        node = self._session(req.session).node
        index = self.core.bell_measure(node, req.qubit_a, req.qubit_b, self._now())
        self._after_request()
        return pb.BellMeasureResponse(protocol_version=PROTOCOL_VERSION, bell_index=index)

    async def start_generation(self, req: pb.StartGenerationRequest) -> pb.StartGenerationResponse:
        check_version(req)
        node = self._session(req.session).node
        armed = self.core.start_generation(
            node,
            req.peer,
            list(req.qubits),
            self._now(),
            bright_state=req.bright_state or None,
        )
        self._after_request()
        return pb.StartGenerationResponse(protocol_version=PROTOCOL_VERSION, armed=armed)

    async def stop_generation(self, req: pb.StopGenerationRequest) -> pb.StopGenerationResponse:
        check_version(req)
        node = self._session(req.session).node
        disarmed = self.core.stop_generation(node, req.peer, self._now())
        self._after_request()
        return pb.StopGenerationResponse(protocol_version=PROTOCOL_VERSION, disarmed=disarmed)

    async def execute(self, req: pb.ExecuteRequest) -> pb.ExecuteResponse:
        check_version(req)
        return self.run_operations(req.session, req.ops)

    def run_operations(self, token: str, ops: Sequence[pb.Operation]) -> pb.ExecuteResponse:
        """``execute`` for a caller in this process (``qnet.sim``): the session's token and
        the operations themselves, without a request around them."""
        node = self._session(token).node
        if len(ops) > MAX_OPERATIONS:
            raise InvalidArgument(f"{len(ops)} operations in one request; at most {MAX_OPERATIONS}")
        now = self._now()
        resp = pb.ExecuteResponse(protocol_version=PROTOCOL_VERSION)
        results = resp.results
        try:
            for op in ops:
                # Filled in place: appending a finished result would copy it.
                self._run_op(node, op, now, results.add())
        except QnetError as exc:
            del results[-1]  # the failed operation's
            resp.failure.CopyFrom(
                pb.OperationFailure(
                    index=len(results), error_type=type(exc).__name__, message=str(exc)
                )
            )
        self._after_request()
        return resp

    async def execute_stream(
        self, requests: AsyncIterator[pb.ExecuteRequest | object]
    ) -> AsyncGenerator[pb.ExecuteResponse, None]:
        """``Execute`` over one stream: a response per request, in order. A request that
        ``execute`` refuses (or one that did not parse) ends the stream with its error."""
        async for req in requests:
            if isinstance(req, Malformed):
                raise malformed_error(req)
            assert isinstance(req, pb.ExecuteRequest)
            yield await self.execute(req)

    def _run_op(self, node: str, op: pb.Operation, now: int, result: pb.OperationResult) -> None:
        core = self.core
        kind = op.WhichOneof("op")
        if kind == "gate":
            g = op.gate
            core.apply_gate(node, wire.gate_from_wire(g.gate), list(g.qubits), g.angle, now)
            return
        if kind == "measure":
            m = op.measure
            basis = wire.basis_from_wire(m.basis)
            result.outcome = core.measure(node, m.qubit, basis, now, keep=m.keep)
            return
        if kind == "arm":
            a = op.arm
            qubits = list(a.qubits)
            if a.allocate:
                qubits += core.allocate(node, a.allocate, now)
            try:
                core.start_generation(
                    node, a.peer, qubits, now, bright_state=a.bright_state or None
                )
            except QnetError:
                if a.allocate:
                    core.free(node, qubits[len(a.qubits) :], now)  # never leak what we took
                raise
            result.qubits.extend(qubits)
            return
        if kind == "disarm":
            d = op.disarm
            disarmed = core.stop_generation(node, d.peer, now)
            if d.free and disarmed:
                core.free(node, disarmed, now)
            result.qubits.extend(disarmed)
            return
        if kind == "free":
            core.free(node, list(op.free.qubits), now)
            return
        if kind == "allocate":
            result.qubits.extend(core.allocate(node, op.allocate.count, now))
            return
        if kind == "bell_measure":
            b = op.bell_measure
            result.outcome = core.bell_measure(node, b.qubit_a, b.qubit_b, now)
            return
        raise InvalidArgument("an operation must set one of its kinds")

    async def events(self, req: pb.EventsRequest) -> AsyncGenerator[pb.Event, None]:
        """The node's heralds, in order, from registration on (queued while no stream is
        open). One stream per session at a time."""
        check_version(req)
        session = self._session(req.session)
        if session.streaming:
            raise AlreadyExists(f"an event stream is already open for node {session.node}")
        session.streaming = True
        session.orphaned_at = None
        self._orphans.discard(session)
        try:
            yield pb.Event(
                protocol_version=PROTOCOL_VERSION,
                time_ns=self._now(),
                subscribed=pb.Subscribed(node=session.node),
            )
            async for event in session.recv:
                yield event
        finally:
            session.streaming = False
            if not session.ended:
                session.orphaned_at = trio.current_time()
                self._orphans.add(session)
                self._reschedule()

    def stream_locally(
        self, token: str, push: Callable[[HeraldEvent | None], None]
    ) -> Callable[[], None]:
        """The session's event stream for a node in this process (``qnet.sim``): as
        ``events``, without the wire. ``push`` takes each herald as the core made it, and
        None when the session ends; what queued while no stream was open comes first.
        Returns the call that closes the stream (the session is then an orphan, as when an
        ``events`` stream closes)."""
        session = self._session(token)
        if session.streaming:
            raise AlreadyExists(f"an event stream is already open for node {session.node}")
        session.streaming = True
        session.orphaned_at = None
        self._orphans.discard(session)
        while True:
            try:
                queued = session.recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if queued.HasField("herald"):
                push(wire.herald_from_wire(session.node, queued))
            elif queued.HasField("session_ended"):
                push(None)
        session.local = push

        def close() -> None:
            session.local = None
            session.streaming = False
            if not session.ended:
                session.orphaned_at = trio.current_time()
                self._orphans.add(session)
                self._reschedule()

        return close

    async def now(self, req: pb.NowRequest) -> pb.NowResponse:
        check_version(req)
        return pb.NowResponse(protocol_version=PROTOCOL_VERSION, now_ns=self._now())

    async def health(self, req: pb.HealthRequest) -> pb.HealthResponse:
        check_version(req)
        return pb.HealthResponse(
            protocol_version=PROTOCOL_VERSION,
            serving=True,
            now_ns=self._now(),
            time_scale=self.clock.scale,
            nodes=len(self.core.nodes()),
            links=len(self.core.links()),
            qubits_in_use=self.core.qubits_in_use,
            uptime_s=self.clock.uptime_s,
            pid=os.getpid(),
            qubits_by_node={n: self.core.memory_in_use(n) for n in self.core.nodes()},
        )

    async def pair_fidelity(self, req: pb.PairFidelityRequest) -> pb.PairFidelityResponse:
        """Test-only oracle (served only when the daemon enables it)."""
        check_version(req)
        if req.bell_index > 3:
            raise InvalidArgument(f"Bell index must be 0..3, got {req.bell_index}")
        fidelity = self.core.oracle_pair_fidelity(
            req.qubit_a, req.qubit_b, req.bell_index, self._now()
        )
        self._after_request()
        return pb.PairFidelityResponse(protocol_version=PROTOCOL_VERSION, fidelity=fidelity)
