"""``RemoteBackend``: the public API over a node daemon's Application service (node.proto).

``async with open_remote("127.0.0.1:7001") as backend`` opens one ``Session`` stream; every
call of the application is a request on it with an id, answered by one response with that id
(see the service's contract in node.proto). One task reads the responses and hands each to its
caller.

Cancellation: a call cancelled while it waits leaves its answer to the next call of the same
kind, as in ``qnet.sockets``. For the calls that take from a stream (``accept``, ``recv``,
``epr``, ``epr_measure``, ``recv_qubit``, and ``allocate``) the client keeps, per socket and
kind, a FIFO of answers the daemon sends in request order (``_Answers``): a call first takes
answers nobody took, then answers already asked for whose callers were cancelled, and asks the
daemon only for the rest. Other calls (``send``, ``close``, ``measure`` …) run to their end at
the daemon; a cancelled caller just does not see the answer.

When the stream ends (the daemon stopped, the network failed) every waiting and later call
raises ``Unreachable``. ``aclose`` half-closes the stream and waits (bounded) until the daemon
has closed the session's sockets and freed its qubits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
import trio

from qnet.api.backend import Address, QubitInfo
from qnet.channel.client import rpc_error_to_qnet
from qnet.channel.wire import BASIS_TO_WIRE, GATE_TO_WIRE
from qnet.daemon.wire import V
from qnet.errors import (
    FailedPrecondition,
    InvalidArgument,
    ProtocolError,
    QnetError,
    Unreachable,
    error_from_wire,
)
from qnet.physical.gates import parse_basis, parse_gate
from qnet.runtime.grpc_bridge import BidiStream, close_channel, stream_stream
from qnet.security.tls import ClientTLS, client_channel
from qnet.transport.bindings import check_port
from qnet.v1 import node_pb2 as pb
from qnet.v1 import node_pb2_grpc as pb_grpc

log = logging.getLogger("qnet.api.remote")

#: Wall-clock seconds to wait for the daemon's first answer, and for it to end a session.
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 15.0

T = TypeVar("T")


class _Slot:
    """The answer to one request of a call that runs to its end at the daemon."""

    def __init__(self, on_answer: Callable[[pb.SessionResponse], None] | None = None) -> None:
        self.done = trio.Event()
        self.response: pb.SessionResponse | None = None
        self.error: QnetError | None = None
        self._on_answer = on_answer

    def answer(self, response: pb.SessionResponse) -> None:
        self.response = response
        if self._on_answer is not None and response.WhichOneof("result") != "error":
            self._on_answer(response)  # even if its caller was cancelled meanwhile
        self.done.set()

    def fail(self, error: QnetError) -> None:
        self.error = error
        self.done.set()


class _Answers(Generic[T]):
    """Answers of one kind of call, in the order the daemon sends them; a cancelled caller's
    answer goes to the next caller."""

    def __init__(self) -> None:
        self.items: deque[T | QnetError] = deque()
        #: Answers asked of the daemon that have not come yet.
        self.outstanding = 0
        #: Answers the callers waiting now still need.
        self.claims = 0
        self.broken: QnetError | None = None
        self._wake = trio.Event()

    def push(self, items: Sequence[T | QnetError], asked: int) -> None:
        """The answer to a request that asked for ``asked`` items (an error answers them all)."""
        self.items.extend(items)
        self.outstanding = max(0, self.outstanding - asked)
        self._wake.set()
        self._wake = trio.Event()

    def break_(self, error: QnetError) -> None:
        self.broken = error
        self._wake.set()

    async def take(self, count: int, ask: Callable[[int], Any]) -> list[T]:
        """``count`` answers; ``await ask(k)`` sends a request for k more when those asked
        already do not cover the callers waiting."""
        if self.broken is not None and not self.items:
            raise self.broken
        spare = len(self.items) + self.outstanding - self.claims
        self.claims += count
        got: list[T] = []
        consumed = 0
        try:
            if count > spare:
                need = count - spare
                # Counted before the request goes so that a concurrent caller does not ask too.
                self.outstanding += need
                sent = False
                try:
                    await ask(need)
                    sent = True
                finally:
                    if not sent:
                        self.outstanding -= need
            while len(got) < count:
                if self.items:
                    item = self.items.popleft()
                    self.claims -= 1
                    consumed += 1
                    if isinstance(item, QnetError):
                        raise item
                    got.append(item)
                    continue
                if self.broken is not None:
                    raise self.broken
                await self._wake.wait()
        finally:
            self.claims -= count - consumed
            if len(got) < count:
                # Answers a cancelled or failed caller took go back, first in line.
                self.items.extendleft(reversed(got))
        return got


@dataclass
class _Route:
    """Where the answer to a request goes."""

    slot: _Slot | None = None
    answers: _Answers[Any] | None = None
    #: How many items the request asked for, and how to turn the response into them.
    asked: int = 1
    unpack: Callable[[pb.SessionResponse], list[Any]] = field(default=lambda r: [_result(r)])


class RemoteBackend:
    """A node daemon as the public API sees it; one per ``open_remote``."""

    def __init__(
        self, stream: BidiStream[pb.SessionRequest, pb.SessionResponse], node: str, address: str
    ) -> None:
        self._stream = stream
        self._node = node
        self.address = address
        self._ids = itertools.count(1)
        self._sockets = itertools.count(1)
        self._routes: dict[int, _Route] = {}
        self._allocations: _Answers[pb.AppQubit] = _Answers()
        self._queues: list[_Answers[Any]] = [self._allocations]
        self._broken: QnetError | None = None
        self._closed = False
        self._ended = trio.Event()

    @property
    def node(self) -> str:
        return self._node

    def socket(self) -> RemoteSocket:
        return RemoteSocket(self, next(self._sockets))

    async def allocate(self) -> QubitInfo:
        (qubit,) = await self._allocations.take(
            1, lambda k: self._ask(self._allocations, k, allocate=pb.QubitAllocate())
        )
        return _qubit_info(qubit)

    async def gate(self, gate: str, qubits: tuple[int, ...], angle: float = 0.0) -> None:
        name = GATE_TO_WIRE[parse_gate(gate)]
        msg = pb.QubitGate(gate=name, qubits=[_qubit_id(q) for q in qubits], angle=float(angle))
        await self._call(gate=msg)

    async def measure(self, qubit: int, basis: str = "Z") -> int:
        msg = pb.QubitMeasure(qubit=_qubit_id(qubit), basis=BASIS_TO_WIRE[parse_basis(basis)])
        response = await self._call(measure=msg)
        return int(response.outcomes.outcomes[0])

    async def free(self, qubit: int) -> None:
        await self._call(free=pb.QubitFree(qubit=_qubit_id(qubit)))

    async def aclose(self) -> None:
        """End the session: the daemon closes its sockets and frees every qubit it holds;
        returns once it has (or after ``CLOSE_TIMEOUT_S``)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # a broken stream ends the session anyway
            rid = next(self._ids)
            await self._stream.send(
                pb.SessionRequest(protocol_version=V, id=rid, goodbye=pb.SessionGoodbye())
            )
        self._stream.done_writing()
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await self._ended.wait()

    # -- requests and answers ----------------------------------------------------------------------

    def _check(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._closed:
            raise FailedPrecondition("the node handle was closed", node=self._node)

    async def _send(self, route: _Route, **command: Any) -> None:
        self._check()
        rid = next(self._ids)
        self._routes[rid] = route
        sent = False
        try:
            await self._stream.send(pb.SessionRequest(protocol_version=V, id=rid, **command))
            sent = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._broken or Unreachable("the session has ended", node=self._node) from None
        finally:
            if not sent:
                self._routes.pop(rid, None)

    async def _call(
        self, on_answer: Callable[[pb.SessionResponse], None] | None = None, **command: Any
    ) -> pb.SessionResponse:
        """One request that runs to its end at the daemon, and its answer."""
        slot = _Slot(on_answer)
        await self._send(_Route(slot=slot), **command)
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.response is not None
        return slot.response

    async def _ask(self, answers: _Answers[Any], count: int, **command: Any) -> None:
        await self._send(_Route(answers=answers, asked=count), **command)

    async def _ask_outcomes(self, answers: _Answers[int], count: int, **command: Any) -> None:
        def unpack(r: pb.SessionResponse) -> list[Any]:
            return list(r.outcomes.outcomes)

        await self._send(_Route(answers=answers, asked=count, unpack=unpack), **command)

    def _queue(self) -> _Answers[Any]:
        answers: _Answers[Any] = _Answers()
        if self._broken is not None:
            answers.break_(self._broken)
        self._queues.append(answers)
        return answers

    async def _read(self, responses: AsyncIterator[pb.SessionResponse]) -> None:
        """Hand every answer to its caller until the stream ends; then fail the rest."""
        error: QnetError = Unreachable("the daemon ended the session", node=self._node)
        try:
            async for response in responses:
                self._deliver(response)
        except QnetError as exc:
            error = exc if isinstance(exc, Unreachable) else Unreachable(str(exc), node=self._node)
        except Exception as exc:  # whatever broke the stream, the session is over
            error = Unreachable(f"the session broke: {exc!r}", node=self._node)
        finally:
            self._broken = error
            for route in self._routes.values():
                if route.slot is not None:
                    route.slot.fail(error)
            self._routes.clear()
            for answers in self._queues:
                answers.break_(error)
            self._ended.set()

    def _deliver(self, response: pb.SessionResponse) -> None:
        route = self._routes.pop(response.id, None)
        kind = response.WhichOneof("result")
        if route is None:
            if kind == "error":
                e = response.error
                log.warning("%s: session error: %s: %s", self._node, e.type, e.message)
            return
        error = None
        if kind == "error":
            e = response.error
            error = error_from_wire(e.type, e.message, node=e.node or None)
        if route.slot is not None:
            if error is not None:
                route.slot.fail(error)
            else:
                route.slot.answer(response)
        elif route.answers is not None:
            route.answers.push([error] if error else route.unpack(response), route.asked)


class RemoteSocket:
    """A socket of a ``RemoteBackend``: the daemon knows it by this session's number for it."""

    def __init__(
        self,
        backend: RemoteBackend,
        number: int,
        *,
        local: Address | None = None,
        peer: Address | None = None,
    ) -> None:
        self._backend = backend
        self.number = number
        self._local = local
        self._peer = peer
        #: The daemon knows the socket (bound, connecting or accepted).
        self._created = local is not None
        self._accepts: _Answers[pb.SocketAccepted] = backend._queue()
        self._data: _Answers[pb.SocketData] = backend._queue()
        self._eprs: _Answers[pb.AppQubit] = backend._queue()
        self._measured: _Answers[int] = backend._queue()
        self._received: _Answers[pb.AppQubit] = backend._queue()

    @property
    def local(self) -> Address | None:
        return self._local

    @property
    def peer(self) -> Address | None:
        return self._peer

    async def bind(self, port: int) -> None:
        check_port(port)
        self._created = True
        await self._backend._call(bind=pb.SocketBind(socket=self.number, port=port))
        self._local = (self._backend.node, port)

    async def listen(self, backlog: int | None = None) -> None:
        self._known()
        if backlog is not None and (isinstance(backlog, bool) or backlog < 0):
            raise InvalidArgument(f"backlog must be ≥ 0, got {backlog!r}")
        msg = pb.SocketListen(socket=self.number, backlog=backlog or 0)
        await self._backend._call(listen=msg)

    async def accept(self) -> tuple[RemoteSocket, Address]:
        self._known()
        backend = self._backend

        async def ask(k: int) -> None:
            for _ in range(k):
                new = next(backend._sockets)
                msg = pb.SocketAccept(socket=self.number, new_socket=new)
                await backend._ask(self._accepts, 1, accept=msg)

        (a,) = await self._accepts.take(1, ask)
        peer = (a.peer_node, a.peer_port)
        sock = RemoteSocket(backend, a.socket, local=(backend.node, a.local_port), peer=peer)
        return sock, peer

    async def connect(self, address: Address, *, min_fidelity: float | None = None) -> None:
        node, port = address
        check_port(port)
        self._created = True
        msg = pb.SocketConnect(socket=self.number, node=str(node), port=port)
        if min_fidelity is not None:
            msg.min_fidelity = float(min_fidelity)

        def connected(response: pb.SessionResponse) -> None:
            c = response.connected
            self._local = (self._backend.node, c.local_port)
            self._peer = (c.peer_node, c.peer_port)

        await self._backend._call(connected, connect=msg)

    async def send(self, data: bytes) -> None:
        self._known()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgument(f"send takes bytes, got {type(data).__name__}")
        await self._backend._call(send=pb.SocketSend(socket=self.number, data=bytes(data)))

    async def recv(self) -> bytes:
        self._known()
        msg = pb.SocketRecv(socket=self.number)
        (d,) = await self._data.take(
            1, lambda k: self._ask_each(self._data, k, lambda: {"recv": msg})
        )
        return b"" if d.end else bytes(d.data)

    async def epr(self) -> QubitInfo:
        self._known()
        msg = pb.SocketEpr(socket=self.number)
        (q,) = await self._eprs.take(
            1, lambda k: self._ask_each(self._eprs, k, lambda: {"epr": msg})
        )
        return _qubit_info(q)

    async def epr_measure(self, n: int, basis: str | Sequence[str] = "Z") -> list[int]:
        self._known()
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidArgument(f"n must be an integer ≥ 0, got {n!r}")
        if isinstance(basis, str):
            bases = [parse_basis(basis)]
        else:
            bases = [parse_basis(b) for b in basis]
            if len(bases) != n:
                raise InvalidArgument(f"{len(bases)} bases given for {n} pairs")
        if n == 0:
            return []

        async def ask(k: int) -> None:
            # Slots a cancelled call asked for keep its bases: these are the last k of ours.
            wanted = bases if len(bases) == 1 else bases[n - k :]
            msg = pb.SocketEprMeasure(
                socket=self.number, count=k, bases=[BASIS_TO_WIRE[b] for b in wanted]
            )
            await self._backend._ask_outcomes(self._measured, k, epr_measure=msg)

        return await self._measured.take(n, ask)

    async def send_qubit(self, qubit: int) -> None:
        self._known()
        msg = pb.SocketSendQubit(socket=self.number, qubit=_qubit_id(qubit))
        await self._backend._call(send_qubit=msg)

    async def recv_qubit(self) -> QubitInfo:
        self._known()
        msg = pb.SocketRecvQubit(socket=self.number)
        (q,) = await self._received.take(
            1, lambda k: self._ask_each(self._received, k, lambda: {"recv_qubit": msg})
        )
        return _qubit_info(q)

    async def close(self) -> None:
        if not self._created or self._backend._closed:
            return  # the daemon never knew it, or closes it with the session
        await self._backend._call(close=pb.SocketClose(socket=self.number))

    async def wait_closed(self) -> None:
        self._known()
        await self._backend._call(wait_closed=pb.SocketWaitClosed(socket=self.number))

    # -- internals ---------------------------------------------------------------------------------

    def _known(self) -> None:
        if not self._created:
            raise FailedPrecondition(
                "the socket is not bound or connected", node=self._backend.node
            )

    async def _ask_each(
        self, answers: _Answers[Any], k: int, command: Callable[[], dict[str, Any]]
    ) -> None:
        for _ in range(k):
            await self._backend._ask(answers, 1, **command())


def _result(response: pb.SessionResponse) -> Any:
    """The message in the response's ``result`` oneof."""
    return getattr(response, response.WhichOneof("result") or "done")


def _qubit_info(q: pb.AppQubit) -> QubitInfo:
    return QubitInfo(int(q.id), float(q.fidelity), int(q.number))


def _qubit_id(qubit: object) -> int:
    if isinstance(qubit, bool) or not isinstance(qubit, int) or qubit < 0:
        raise InvalidArgument(f"a qubit id is an integer ≥ 0, got {qubit!r}")
    return qubit


@asynccontextmanager
async def open_remote(
    address: str, tls: ClientTLS | None = None
) -> AsyncGenerator[RemoteBackend, None]:
    """A session with the node daemon at ``address`` ("host:port"); leaving it ends the
    session (``aclose``). ``Unreachable`` if no daemon answers within ``OPEN_TIMEOUT_S``.
    ``tls``: mutual TLS with the network's application credential (``resolve``)."""
    channel = client_channel(address, tls)

    def mapper(error: grpc.RpcError) -> BaseException:
        return rpc_error_to_qnet(error, where=f"qnetd at {address}")

    try:
        stub = pb_grpc.ApplicationStub(channel)
        async with stream_stream(stub.Session, error_mapper=mapper) as stream:
            responses = aiter(stream)
            with trio.move_on_after(OPEN_TIMEOUT_S) as wait:
                first = await anext(responses, None)
            if wait.cancelled_caught:
                raise Unreachable(f"qnetd at {address} did not answer in {OPEN_TIMEOUT_S:g} s")
            if first is None or first.WhichOneof("result") != "opened":
                raise ProtocolError(f"qnetd at {address} did not open the session")
            backend = RemoteBackend(stream, first.opened.node, address)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(backend._read, responses)
                try:
                    yield backend
                finally:
                    await backend.aclose()
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await close_channel(channel)
