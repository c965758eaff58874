"""The Application service of node.proto: the socket API for applications outside the daemon.

Each ``Session`` stream is one application handle (``qnet.connect``, ``qnet.open_node``). Its
requests are dispatched in arrival order by one task: the checks and anything that needs no
waiting happen there, and every request that may wait goes to a *lane*, a task that runs the
requests given to it one after another. A socket has a lane per kind of call (accept, connect,
output, recv, epr, epr_measure, recv_qubit, wait_closed) and the session one for ``allocate``
and one for the other qubit operations, so calls of one kind keep their order and their
answers come in request order, while a ``recv`` waiting for data holds up neither a ``send``
nor an ``epr``, and an ``allocate`` waiting for memory holds up no gate or measurement (those
can only name qubits the session holds already). ``send``,
``send_qubit`` and ``close`` share the output lane: a Fin must follow the data and qubits
queued before it. ``send_qubit`` only hands the qubit over in its lane and waits for the
teleport in a task of its own, so that teleports pipeline.

The session holds the qubits it allocated or took (pairs, teleported qubits), in the node's
memory accounting (``NodeRuntime.hold_qubits``); it may act only on those. Channel-backend
calls run shielded (bounded): a call cut short could leave a qubit that nobody knows of.

``gate``, ``measure`` and ``free`` go to the backend as operations of ``Execute`` requests on
the node's execute stream (``ChannelAccess.execute``), not as unary calls: a unary call costs
both processes about twice what a stream message does. Those that queued in the qubit lane
while a request was out go together in the next request, in order (checked in order too, so a
gate after a measure of the same qubit fails as it would alone), which is also one round trip
to the backend for all of them instead of one each.

When the stream ends the session ends. If the application ended it (a ``goodbye`` request,
then the client half-closed its requests), its sockets close gracefully: their output is
closed and each connection may finish for ``LINGER_S`` (what arrives meanwhile is
discarded), then it is aborted. If the
stream ended without a goodbye (the process died, the network failed, the daemon stops),
every connection is
aborted at once and its peer sees ``Unreachable``. Either way every qubit the session held is
freed before the response stream ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from qnet.channel import wire as channel_wire
from qnet.daemon import wire
from qnet.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QnetError,
    Timeout,
    Unreachable,
    error_from_wire,
)
from qnet.node.runtime import NodeRuntime
from qnet.physical.gates import GATES, Basis
from qnet.runtime.grpc_bridge import TrioGrpcBridge
from qnet.runtime.grpc_service import Guard, Malformed, RpcHandler, malformed_error, service_handler
from qnet.sockets import Qubit, Socket
from qnet.transport.bindings import check_port
from qnet.v1 import channel_pb2 as channel_pb
from qnet.v1 import node_pb2 as pb

log = logging.getLogger("qnet.daemon.apps")

#: Wall-clock seconds an ``allocate`` waits for the link layers to hand back memory.
ALLOCATE_TIMEOUT_S = 1.0
#: Bound on one channel-backend call made for a session (they run shielded).
BACKEND_CALL_S = 10.0
#: Wall-clock seconds a gracefully closed connection may take to finish after its session.
LINGER_S = 5.0
#: A session that allocates keeps as many qubits free for its ``allocate`` calls as it had in
#: use from them lately (at most ``RESERVE_MAX``), until ``RESERVE_IDLE_S`` wall seconds pass
#: without an ``allocate`` (``NodeRuntime.reserve_app_memory``). Otherwise the link layers arm
#: every qubit the application frees before its next ``allocate`` comes, and each allocation
#: waits until a pair is consumed somewhere (a teleporting application mostly waits then).
RESERVE_MAX = 4
RESERVE_IDLE_S = 0.5
#: Most qubit operations sent to the backend in one ``Execute`` request.
MAX_BATCH = 64

Job = Callable[[], Awaitable[None]]
T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _QubitOp:
    """A ``gate``, ``measure`` or ``free`` waiting in the qubit lane: ``prepare`` checks it
    (and takes the qubit from the session where the operation ends its use) when its turn
    comes and returns its operation; ``answer`` gets the operation's result; a measurement
    that failed frees its qubit (``frees``)."""

    rid: int
    prepare: Callable[[], channel_pb.Operation]
    answer: Callable[[channel_pb.OperationResult], None]
    frees: int | None = None


class AppService:
    """Serve Application for a node; ``run`` it once the node's runtime runs. Until then
    every session fails with UNAVAILABLE."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._runtime: NodeRuntime | None = None
        self._nursery: trio.Nursery | None = None
        self._sessions: set[_Session] = set()
        #: Which session holds each qubit applications hold here.
        self.owners: dict[int, _Session] = {}

    def handlers(self, bridge: TrioGrpcBridge, guard: Guard | None = None) -> RpcHandler:
        return service_handler(
            pb.DESCRIPTOR.services_by_name["Application"],
            bridge,
            {"Session": self.session},
            guard=guard,
        )

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def qubits_held(self) -> int:
        return len(self.owners)

    async def run(
        self, runtime: NodeRuntime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve sessions on ``runtime`` (already running) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._runtime, self._nursery = runtime, nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._runtime = self._nursery = None

    async def session(
        self, requests: AsyncIterator[pb.SessionRequest | Malformed]
    ) -> AsyncIterator[pb.SessionResponse]:
        if self._runtime is None or self._nursery is None:
            raise Unreachable("the daemon is still starting", node=self.node)
        send, recv = trio.open_memory_channel[pb.SessionResponse](math.inf)
        session = _Session(self, self._runtime, send)
        self._sessions.add(session)
        self._nursery.start_soon(session.run, requests, self._nursery)
        try:
            yield pb.SessionResponse(
                protocol_version=wire.V, opened=pb.SessionOpened(node=self.node)
            )
            async for response in recv:
                yield response
        finally:
            # The client went away (or the daemon stops): the session aborts and cleans up.
            session.scope.cancel()
            recv.close()

    def forget(self, session: _Session) -> None:
        self._sessions.discard(session)
        self.update_reserve()

    def update_reserve(self) -> None:
        """Tell the runtime how many free qubits the sessions want kept for allocations."""
        if self._runtime is not None:
            self._runtime.reserve_app_memory(sum(s.reserve for s in self._sessions))


class _Session:
    def __init__(
        self,
        service: AppService,
        runtime: NodeRuntime,
        send: trio.MemorySendChannel[pb.SessionResponse],
    ) -> None:
        self.service = service
        self.node = service.node
        self.runtime = runtime
        self._send = send
        self.scope = trio.CancelScope()
        self.sockets: dict[int, Socket] = {}
        #: Socket numbers named by an ``accept`` still waiting.
        self._reserved: set[int] = set()
        self.qubits: set[int] = set()
        self._lanes: dict[tuple[int, str], trio.MemorySendChannel[Job]] = {}
        #: The qubit lane: gates, measurements and frees, in request order.
        self._qubit_lane: deque[_QubitOp] = deque()
        self._qubit_wake = trio.Event()
        self._tasks: trio.Nursery | None = None
        self._commands: dict[str, Callable[[int, Any], None]] = {
            "bind": self._bind,
            "listen": self._listen,
            "accept": self._accept,
            "connect": self._connect,
            "send": self._send_data,
            "recv": self._recv,
            "epr": self._epr,
            "epr_measure": self._epr_measure,
            "send_qubit": self._send_qubit,
            "recv_qubit": self._recv_qubit,
            "close": self._close,
            "wait_closed": self._wait_closed,
            "allocate": self._allocate,
            "gate": self._gate,
            "measure": self._measure,
            "free": self._free,
            "goodbye": self._goodbye,
        }
        #: The application said goodbye: its stream's end is a graceful close, not a loss.
        self.said_goodbye = False
        #: Qubits handed out by ``allocate`` and still held; how many to keep in use or
        #: free for it, and until when (see ``RESERVE_MAX``).
        self._allocated: set[int] = set()
        self._allocating = 0
        self._reserve_target = 0
        self._reserve_until = 0.0
        self._reserve_wake = trio.Event()

    # -- running ---------------------------------------------------------------------------------

    async def run(
        self, requests: AsyncIterator[pb.SessionRequest | Malformed], service_tasks: trio.Nursery
    ) -> None:
        graceful = False
        try:
            with self.scope:
                async with trio.open_nursery() as tasks:
                    self._tasks = tasks
                    tasks.start_soon(self._expire_reserve)
                    tasks.start_soon(self._run_qubit_lane)
                    try:
                        async for request in requests:
                            self._dispatch(request)
                        # A killed client's stream can also end without an error here, so
                        # only an explicit goodbye makes the end graceful.
                        graceful = self.said_goodbye
                    except QnetError as exc:
                        log.info("%s: an application session broke: %s", self.node, exc)
                    except Exception as exc:  # the bridge's "RPC cancelled" among others
                        log.info("%s: an application session ended: %r", self.node, exc)
                    tasks.cancel_scope.cancel()
        finally:
            self._tasks = None
            with trio.move_on_after(BACKEND_CALL_S, shield=True):
                await self._end(graceful and not self.scope.cancel_called, service_tasks)
            self.service.forget(self)
            self._send.close()

    def _dispatch(self, request: pb.SessionRequest | Malformed) -> None:
        """Run a request's checks and its part that does not wait, now, in arrival order."""
        if isinstance(request, Malformed):
            self._fail(0, malformed_error(request))
            return
        rid = request.id
        try:
            wire.check_version(request)
            if rid == 0:
                raise InvalidArgument("request id must be at least 1")
            kind = request.WhichOneof("command")
            if kind is None:
                raise InvalidArgument("the request names no command")
            self._commands[kind](rid, getattr(request, kind))
        except QnetError as exc:
            self._fail(rid, exc)
        except Exception as exc:
            log.exception("%s: an application request failed", self.node)
            self._fail(rid, QnetError(f"internal error: {type(exc).__name__}: {exc}"))

    def _goodbye(self, rid: int, msg: pb.SessionGoodbye) -> None:
        self.said_goodbye = True

    def _lane(self, socket: int, kind: str, rid: int, job: Job) -> None:
        """Queue ``job`` behind the earlier ones of its lane; its error answers ``rid``."""
        lane = self._lanes.get((socket, kind))
        if lane is None:
            assert self._tasks is not None
            lane, jobs = trio.open_memory_channel[Job](math.inf)
            self._lanes[(socket, kind)] = lane
            self._tasks.start_soon(self._run_lane, jobs)

        async def guarded() -> None:
            await self._guard(rid, job)

        lane.send_nowait(guarded)

    @staticmethod
    async def _run_lane(jobs: trio.MemoryReceiveChannel[Job]) -> None:
        async for job in jobs:
            await job()

    def _queue_qubit(self, op: _QubitOp) -> None:
        self._qubit_lane.append(op)
        self._qubit_wake.set()

    async def _run_qubit_lane(self) -> None:
        lane = self._qubit_lane
        while True:
            while not lane:
                self._qubit_wake = trio.Event()
                await self._qubit_wake.wait()
            batch = [lane.popleft() for _ in range(min(len(lane), MAX_BATCH))]
            try:
                await self._execute(batch)
            except Exception as exc:
                # A bug here must cost the application its answers, never the daemon.
                log.exception("%s: application qubit operations failed", self.node)
                error = QnetError(f"internal error: {type(exc).__name__}: {exc}")
                for op in batch:
                    self._fail(op.rid, error)

    async def _execute(self, batch: list[_QubitOp]) -> None:
        """Check the operations in order, run those that pass in one ``Execute`` request (the
        rest of it again after one that failed), and answer each."""
        owners: list[_QubitOp] = []
        ops: list[channel_pb.Operation] = []
        for item in batch:
            try:
                ops.append(item.prepare())
            except QnetError as exc:
                self._fail(item.rid, exc)
                continue
            owners.append(item)
        start = 0
        while start < len(ops):
            try:
                resp = await self._backend(self.runtime.channel.execute(ops[start:]))
            except QnetError as exc:
                for item in owners[start:]:
                    await self._failed_op(item, exc)
                return
            for i, result in enumerate(resp.results):
                owners[start + i].answer(result)
            if not resp.HasField("failure"):
                return
            failed = start + resp.failure.index
            f = resp.failure
            await self._failed_op(owners[failed], error_from_wire(f.error_type, f.message))
            start = failed + 1

    async def _failed_op(self, item: _QubitOp, error: QnetError) -> None:
        if item.frees is not None:
            # Whatever state the qubit is in, nobody may leave it allocated.
            with contextlib.suppress(QnetError):
                await self._backend(self.runtime.channel.free([item.frees]))
        self._fail(item.rid, error)

    async def _guard(self, rid: int, job: Job) -> None:
        try:
            await job()
        except QnetError as exc:
            self._fail(rid, exc)
        except Exception as exc:
            # A bug here must cost the application one answer, never the daemon.
            log.exception("%s: an application request failed", self.node)
            self._fail(rid, QnetError(f"internal error: {type(exc).__name__}: {exc}"))

    # -- answers ---------------------------------------------------------------------------------

    def _answer(self, rid: int, **result: Any) -> None:
        # The application may have gone already: its session is ending then.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._send.send_nowait(pb.SessionResponse(protocol_version=wire.V, id=rid, **result))

    def _done(self, rid: int) -> None:
        self._answer(rid, done=pb.SessionDone())

    def _fail(self, rid: int, exc: QnetError) -> None:
        reason, node = exc.reason, exc.node
        if node is None:
            # A check here, or an error relayed from the backend with the node in its text.
            node = self.node
            reason = reason.removeprefix(f"{node}: ")
        error = pb.SessionError(type=type(exc).__name__, message=reason, node=node)
        self._answer(rid, error=error)

    def _qubit(self, rid: int, qubit: Qubit) -> None:
        self._hold(qubit.id)
        info = pb.AppQubit(id=qubit.id, fidelity=qubit.fidelity, number=qubit.number)
        self._answer(rid, qubit=info)

    # -- qubits the session holds ------------------------------------------------------------------

    def _hold(self, qubit: int) -> None:
        self.qubits.add(qubit)
        self.service.owners[qubit] = self
        self.runtime.hold_qubits((qubit,))

    def _check_held(self, qubit: int) -> None:
        if qubit in self.qubits:
            return
        if qubit in self.service.owners:
            raise PermissionDenied(f"qubit {qubit} is another application's", node=self.node)
        raise NotFound(
            f"qubit {qubit} is not held by this application (measured, freed or sent?)",
            node=self.node,
        )

    def _take(self, qubit: int) -> None:
        """The qubit leaves the session (measured, freed or handed to the transport)."""
        self._check_held(qubit)
        self.qubits.discard(qubit)
        self.service.owners.pop(qubit, None)
        self.runtime.release_qubits((qubit,))
        if qubit in self._allocated:
            self._allocated.discard(qubit)
            self.service.update_reserve()

    def _handle(self, qubit: int) -> Qubit:
        return Qubit(self.runtime.channel, self.node, qubit)

    async def _backend(self, call: Awaitable[T]) -> T:
        """A channel-backend call that runs to its end even if the session is cancelled."""
        with trio.move_on_after(BACKEND_CALL_S, shield=True):
            return await call
        raise Timeout(f"the channel backend did not answer in {BACKEND_CALL_S:g} s", node=self.node)

    # -- socket commands ---------------------------------------------------------------------------

    def _socket(self, number: int) -> Socket:
        sock = self.sockets.get(number)
        if sock is None:
            raise NotFound(f"no socket {number} in this session", node=self.node)
        return sock

    def _new_or_existing(self, number: int) -> Socket:
        if number < 1:
            raise InvalidArgument(f"socket numbers start at 1, got {number}")
        if number in self._reserved:
            raise FailedPrecondition(f"socket {number} is named by an accept", node=self.node)
        if number not in self.sockets:
            self.sockets[number] = self.runtime.transport_layer.socket()
        return self.sockets[number]

    def _bind(self, rid: int, msg: pb.SocketBind) -> None:
        check_port(msg.port)
        sock = self._new_or_existing(msg.socket)
        sock.bind(msg.port)
        self._done(rid)

    def _listen(self, rid: int, msg: pb.SocketListen) -> None:
        self._socket(msg.socket).listen(msg.backlog or None)
        self._done(rid)

    def _accept(self, rid: int, msg: pb.SocketAccept) -> None:
        sock = self._socket(msg.socket)
        new = msg.new_socket
        if new < 1 or new in self.sockets or new in self._reserved:
            raise InvalidArgument(f"new_socket must be an unused socket number, got {new}")
        self._reserved.add(new)

        async def job() -> None:
            try:
                conn, (peer, port) = await sock.accept()
            finally:
                self._reserved.discard(new)
            self.sockets[new] = conn
            accepted = pb.SocketAccepted(
                socket=new, local_port=conn.local_port or 0, peer_node=peer, peer_port=port
            )
            self._answer(rid, accepted=accepted)

        self._lane(msg.socket, "accept", rid, job)

    def _connect(self, rid: int, msg: pb.SocketConnect) -> None:
        if not msg.node:
            raise InvalidArgument("connect needs the node to connect to")
        check_port(msg.port)
        min_fidelity = msg.min_fidelity if msg.HasField("min_fidelity") else None
        if min_fidelity is not None and not (
            math.isfinite(min_fidelity) and 0.0 <= min_fidelity <= 1.0
        ):
            raise InvalidArgument(f"min_fidelity must be in [0, 1], got {min_fidelity!r}")
        sock = self._new_or_existing(msg.socket)

        async def job() -> None:
            await sock.connect((msg.node, msg.port), min_fidelity=min_fidelity)
            assert sock.peer is not None
            connected = pb.SocketConnected(
                local_port=sock.local_port or 0, peer_node=sock.peer[0], peer_port=sock.peer[1]
            )
            self._answer(rid, connected=connected)

        self._lane(msg.socket, "connect", rid, job)

    def _send_data(self, rid: int, msg: pb.SocketSend) -> None:
        sock = self._socket(msg.socket)

        async def job() -> None:
            await sock.send(msg.data)
            self._done(rid)

        self._lane(msg.socket, "output", rid, job)

    def _send_qubit(self, rid: int, msg: pb.SocketSendQubit) -> None:
        sock = self._socket(msg.socket)
        qubit = msg.qubit

        async def job() -> None:
            self._check_held(qubit)
            sent = sock.start_send_qubit(self._handle(qubit))
            # The transport holds it now (and counts it); the session no longer does.
            self._take(qubit)

            async def finish() -> None:
                await sent
                self._done(rid)

            assert self._tasks is not None
            self._tasks.start_soon(self._guard, rid, finish)

        self._lane(msg.socket, "output", rid, job)

    def _close(self, rid: int, msg: pb.SocketClose) -> None:
        sock = self._socket(msg.socket)

        async def job() -> None:
            await sock.close()
            self._done(rid)

        self._lane(msg.socket, "output", rid, job)

    def _recv(self, rid: int, msg: pb.SocketRecv) -> None:
        sock = self._socket(msg.socket)

        async def job() -> None:
            data = await sock.recv()
            self._answer(rid, data=pb.SocketData(data=data, end=not data))

        self._lane(msg.socket, "recv", rid, job)

    def _epr(self, rid: int, msg: pb.SocketEpr) -> None:
        sock = self._socket(msg.socket)

        async def job() -> None:
            self._qubit(rid, await sock.epr())

        self._lane(msg.socket, "epr", rid, job)

    def _epr_measure(self, rid: int, msg: pb.SocketEprMeasure) -> None:
        sock = self._socket(msg.socket)
        count = msg.count
        if count < 1:
            raise InvalidArgument(f"count must be at least 1, got {count}")
        bases = [channel_wire.basis_from_wire(b) for b in msg.bases]
        if len(bases) not in (0, 1, count):
            raise InvalidArgument(f"{len(bases)} bases for {count} pairs (give 1 or {count})")
        basis: Basis | list[Basis] = bases if len(bases) > 1 else (bases or [Basis.Z])[0]

        async def job() -> None:
            outcomes = await sock.epr_measure(count, basis)
            self._answer(rid, outcomes=pb.Outcomes(outcomes=outcomes))

        self._lane(msg.socket, "epr_measure", rid, job)

    def _recv_qubit(self, rid: int, msg: pb.SocketRecvQubit) -> None:
        sock = self._socket(msg.socket)

        async def job() -> None:
            self._qubit(rid, await sock.recv_qubit())

        self._lane(msg.socket, "recv_qubit", rid, job)

    def _wait_closed(self, rid: int, msg: pb.SocketWaitClosed) -> None:
        sock = self._socket(msg.socket)

        async def job() -> None:
            await sock.wait_closed()
            self._done(rid)

        self._lane(msg.socket, "wait_closed", rid, job)

    # -- qubit commands ----------------------------------------------------------------------------

    def _allocate(self, rid: int, msg: pb.QubitAllocate) -> None:
        runtime = self.runtime

        async def job() -> None:
            in_use = len(self._allocated) + 1
            self._reserve_target = min(RESERVE_MAX, max(self._reserve_target, in_use))
            self._reserve_until = trio.current_time() + RESERVE_IDLE_S
            self._reserve_wake.set()
            self._reserve_wake = trio.Event()
            # While it waits the runtime counts its slot already.
            self._allocating += 1
            self.service.update_reserve()
            try:
                timeout_ns = int(ALLOCATE_TIMEOUT_S * runtime.clock.scale * 1e9)
                qubit = await self._backend(runtime.allocate_qubit(timeout_ns=timeout_ns))
            finally:
                self._allocating -= 1
            # allocate_qubit counted it as an application's already.
            self._allocated.add(qubit)
            self.service.update_reserve()
            self.qubits.add(qubit)
            self.service.owners[qubit] = self
            self._answer(rid, qubit=pb.AppQubit(id=qubit, fidelity=1.0, number=-1))

        self._lane(0, "allocate", rid, job)

    def _gate(self, rid: int, msg: pb.QubitGate) -> None:
        name = channel_wire.gate_from_wire(msg.gate)
        qubits = tuple(msg.qubits)
        arity = GATES[name].arity
        if len(qubits) != arity:
            raise InvalidArgument(f"gate {name.value} acts on {arity} qubits, got {len(qubits)}")
        if len(set(qubits)) != len(qubits):
            raise InvalidArgument(f"gate {name.value} on the same qubit twice")
        if not math.isfinite(msg.angle):
            raise InvalidArgument(f"angle must be finite, got {msg.angle!r}")
        op = channel_pb.Operation(
            gate=channel_pb.GateOp(gate=msg.gate, qubits=qubits, angle=msg.angle)
        )

        def prepare() -> channel_pb.Operation:
            for q in qubits:
                self._check_held(q)
            return op

        def answer(result: channel_pb.OperationResult) -> None:
            self._done(rid)

        self._queue_qubit(_QubitOp(rid, prepare, answer))

    def _measure(self, rid: int, msg: pb.QubitMeasure) -> None:
        basis = channel_wire.basis_from_wire(msg.basis) if msg.basis else Basis.Z
        qubit = msg.qubit
        op = channel_pb.Operation(
            measure=channel_pb.MeasureOp(qubit=qubit, basis=channel_wire.BASIS_TO_WIRE[basis])
        )

        def prepare() -> channel_pb.Operation:
            self._take(qubit)
            return op

        def answer(result: channel_pb.OperationResult) -> None:
            self._answer(rid, outcomes=pb.Outcomes(outcomes=[result.outcome]))

        self._queue_qubit(_QubitOp(rid, prepare, answer, frees=qubit))

    def _free(self, rid: int, msg: pb.QubitFree) -> None:
        qubit = msg.qubit
        op = channel_pb.Operation(free=channel_pb.FreeOp(qubits=[qubit]))

        def prepare() -> channel_pb.Operation:
            self._take(qubit)
            return op

        def answer(result: channel_pb.OperationResult) -> None:
            self._done(rid)

        self._queue_qubit(_QubitOp(rid, prepare, answer))

    # -- memory kept for allocations -------------------------------------------------------------

    @property
    def reserve(self) -> int:
        """Free qubits this session wants kept for its next allocations."""
        return max(0, self._reserve_target - len(self._allocated) - self._allocating)

    async def _expire_reserve(self) -> None:
        """Drop the reservation once the application stopped allocating."""
        while True:
            wake = self._reserve_wake
            if self._reserve_target and trio.current_time() >= self._reserve_until:
                self._reserve_target = 0
                self.service.update_reserve()
            deadline = self._reserve_until if self._reserve_target else math.inf
            with trio.move_on_at(deadline):
                await wake.wait()

    # -- ending ------------------------------------------------------------------------------------

    async def _end(self, graceful: bool, service_tasks: trio.Nursery) -> None:
        """Close or abort every socket and free every qubit the session holds."""
        for sock in self.sockets.values():
            if graceful and sock.peer is not None:
                try:
                    await sock.close()
                except QnetError:
                    sock.abort()
                    continue
                service_tasks.start_soon(_linger, sock)
            else:
                sock.abort()
        self.sockets.clear()
        self._reserve_target = 0
        self._allocated.clear()
        self.service.update_reserve()
        left = sorted(self.qubits)
        self.qubits.clear()
        for q in left:
            self.service.owners.pop(q, None)
        self.runtime.release_qubits(left)
        if left:
            try:
                await self.runtime.channel.free(left)
            except QnetError as exc:
                log.warning("%s: freeing a session's qubits failed: %s", self.node, exc)
            log.info("%s: freed %d qubits of an ended session", self.node, len(left))


async def _linger(sock: Socket) -> None:
    """Let a connection whose application left after closing it finish, discarding what
    still arrives, for at most ``LINGER_S``; then abort it."""

    async def drain_data() -> None:
        while await sock.recv():
            pass

    async def drain_qubits() -> None:
        while True:
            qubit = await sock.recv_qubit()
            await qubit.free()

    async def drain(fn: Callable[[], Awaitable[None]]) -> None:
        with contextlib.suppress(QnetError):  # the stream ended: nothing more to discard
            await fn()

    with trio.move_on_after(LINGER_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, drain_data)
            nursery.start_soon(drain, drain_qubits)
            await drain(sock.wait_closed)
            nursery.cancel_scope.cancel()
    sock.abort()
