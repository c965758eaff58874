"""The socket API as trio coroutines, in the process that runs the node (DESIGN §7).

``sock = runtime.transport_layer.socket()`` gives a ``Socket``; then, as in BSD sockets::

    srv.bind(7); srv.listen(); conn, peer = await srv.accept()     # peer == (node, port)
    c = node.transport_layer.socket(); await c.connect(("bob", 7))
    await c.send(b"hi"); await conn.recv() == b"hi"                # ordered, reliable
    q = await c.epr(); r = await conn.epr()                        # k-th halves form Φ+
    await c.send_qubit(q); q2 = await conn.recv_qubit()
    bits = await c.epr_measure(n, basis="Z")                      # both ends call it
    await c.close(); await c.wait_closed()

``recv`` returns ``b""`` once the peer closed its output and every message was read.
``close`` closes this end's output (half-close) and returns; ``wait_closed`` waits until both
ends closed. Errors are ``qnet.errors`` types naming the node that raised them (a port nobody
listens on: ``NotFound``; no route: ``Unreachable``; ``Timeout``). ``settimeout(seconds)``
bounds every call of a socket (``Timeout``), or use trio cancel scopes. A call cancelled while it
waits leaves its answer to the next call of the same kind (the core never withdraws demand).

Qubits handed to the application are ``Qubit`` handles (the node's qubit id): measure, apply
gates or free them through the node's channel session; every one the application takes is its
own to measure or free.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

import trio

from qnet.errors import FailedPrecondition, InvalidArgument, NotFound, QnetError, Timeout
from qnet.node.interfaces import ChannelAccess
from qnet.node.transport_driver import NodeTransport
from qnet.physical.gates import Basis, GateName, parse_basis
from qnet.transport.events import (
    Closed,
    Connected,
    ConnectionAccepted,
    Data,
    EprPair,
    Error,
    MeasuredPair,
    PairsEnded,
    PeerFinished,
    QubitReceived,
    QubitSent,
    TransportEvent,
)

T = TypeVar("T")
V = TypeVar("V")
Address = tuple[str, int]


@dataclass(eq=False)
class Qubit:
    """A qubit of this node the application holds (``id`` names it at the channel backend)."""

    channel: ChannelAccess
    node: str
    id: int
    #: The transport's fidelity estimate at delivery (pairs), else 1.
    fidelity: float = 1.0
    #: Which pair of the epr stream this is (0, 1, …), or -1.
    number: int = -1
    freed: bool = False

    async def measure(self, basis: Basis | str = Basis.Z) -> int:
        """Measure (and free) the qubit: 0 for the +1 eigenstate."""
        self._check()
        self.freed = True
        return await self.channel.measure(self.id, parse_basis(basis))

    async def gate(self, gate: GateName | str, angle: float = 0.0) -> None:
        self._check()
        await self.channel.gate(GateName(gate), self.id, angle=angle)

    async def free(self) -> None:
        if not self.freed:
            self.freed = True
            await self.channel.free([self.id])

    def _check(self) -> None:
        if self.freed:
            raise FailedPrecondition(f"qubit {self.id} was measured or freed", node=self.node)


class _Stream(Generic[V]):
    """Answers of one kind of call, in order; ``register(k)`` asks the core for k more."""

    def __init__(self) -> None:
        self.items: deque[V] = deque()
        #: Answers asked of the core and not yet come.
        self.outstanding = 0
        #: Answers callers waiting now still need.
        self.claims = 0
        self.error: QnetError | None = None
        #: Set when no further answer will come once ``outstanding`` reaches 0.
        self.final: QnetError | None = None
        self._wake = trio.Event()

    def push(self, item: V) -> None:
        self.items.append(item)
        self.outstanding = max(0, self.outstanding - 1)
        self.wake()

    def wake(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def take(self, count: int, register: Callable[[int], None] | None) -> list[V]:
        if self.error is not None and not self.items:
            raise self.error
        spare = len(self.items) + self.outstanding - self.claims
        if register is not None and count > spare and self.final is None:
            register(count - spare)
            self.outstanding += count - spare
        self.claims += count
        got: list[V] = []
        try:
            while len(got) < count:
                if self.items:
                    got.append(self.items.popleft())
                    self.claims -= 1
                    continue
                if self.error is not None:
                    raise self.error
                if self.final is not None and self.outstanding == 0:
                    raise self.final
                await self._wake.wait()
        finally:
            self.claims -= count - len(got)
            # Answers taken by a cancelled caller go back, first in line.
            if len(got) < count:
                self.items.extendleft(reversed(got))
        return got

    def fail(self, error: QnetError) -> None:
        self.error = error
        self.wake()


class Sockets:
    """The application side of one node's ``NodeTransport``: routes its events to sockets."""

    def __init__(self, transport: NodeTransport, channel: ChannelAccess) -> None:
        self.transport = transport
        self.channel = channel
        self.node = transport.node
        self._listeners: dict[int, _Stream[ConnectionAccepted]] = {}
        self._conns: dict[int, Socket] = {}
        #: Sockets of accepted connections that ``accept`` has not returned yet (one that
        #: failed meanwhile is gone from ``_conns`` but still returned, and raises its error).
        self._unclaimed: dict[int, Socket] = {}
        transport.subscribe(self._on_event)

    def socket(self) -> Socket:
        return Socket(self)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Call the core as the application; its outputs move on even if it raised."""
        try:
            return fn(*args, self.transport.now())
        finally:
            self.transport.flush()

    def _on_event(self, event: TransportEvent) -> None:
        if isinstance(event, ConnectionAccepted):
            stream = self._listeners.get(event.port)
            if stream is not None:
                accepted = Socket(self, event.conn, (event.remote, event.remote_port))
                accepted._local = event.port
                self._conns[event.conn] = accepted
                self._unclaimed[event.conn] = accepted
                stream.push(event)
            return
        sock = self._conns.get(event.conn)
        if sock is not None:
            sock._on_event(event)
        elif isinstance(event, EprPair | QubitReceived):
            self.transport.free((event.qubit,))  # nobody will take it


class Socket:
    """A listening or connected endpoint. ``accept`` returns connected ones."""

    def __init__(self, owner: Sockets, conn: int | None = None, peer: Address | None = None):
        self._owner = owner
        self.node = owner.node
        self._conn = conn
        self.peer = peer
        self._local: int | None = None
        self._listening = False
        self._timeout: float | None = None
        self._connected: _Stream[Connected] = _Stream()
        self._data: _Stream[bytes] = _Stream()
        self._eprs: _Stream[EprPair] = _Stream()
        self._measured: _Stream[MeasuredPair] = _Stream()
        self._received: _Stream[QubitReceived] = _Stream()
        self._sent: dict[int, QubitSent] = {}
        self._sent_wake = trio.Event()
        self._closed: _Stream[Closed] = _Stream()
        self._error: QnetError | None = None

    # -- setup ---------------------------------------------------------------------------------

    @property
    def local_port(self) -> int | None:
        """This end's port once bound or connected."""
        return self._local

    def settimeout(self, seconds: float | None) -> None:
        """Bound each call (``Timeout``); None: wait as long as it takes."""
        self._timeout = seconds

    def bind(self, port: int) -> None:
        if self._conn is not None or self._local is not None:
            raise FailedPrecondition("socket already bound or connected", node=self.node)
        self._local = port

    def listen(self, backlog: int | None = None) -> None:
        if self._local is None:
            raise FailedPrecondition("bind a port before listen", node=self.node)
        core = self._owner.transport.core
        self._owner.call(lambda now: core.listen(self._local, now, backlog=backlog))  # type: ignore[arg-type]
        self._owner._listeners[self._local] = _Stream()
        self._listening = True

    async def accept(self) -> tuple[Socket, Address]:
        """The next established connection to this port, and its peer (node, port)."""
        port = self._local
        if not self._listening or port is None:
            raise FailedPrecondition("accept on a socket that does not listen", node=self.node)
        stream = self._owner._listeners[port]
        core = self._owner.transport.core

        def register(k: int) -> None:
            for _ in range(k):
                self._owner.call(core.accept, port)

        (event,) = await self._bounded(stream.take(1, register))
        sock = self._owner._unclaimed.pop(event.conn)
        assert sock.peer is not None
        return sock, sock.peer

    async def connect(self, address: Address, *, min_fidelity: float | None = None) -> None:
        """Connect to ``(node, port)``; returns once the connection (and circuit) is open.
        Pairs meet ``min_fidelity`` at delivery; None: the network's routing fidelity
        threshold (0 asks for the fastest pairs, whatever their fidelity)."""
        if self._conn is not None or self._listening:
            raise FailedPrecondition("socket already connected or listening", node=self.node)
        remote, port = address
        if min_fidelity is None:
            min_fidelity = self._owner.transport.default_min_fidelity
        core = self._owner.transport.core
        local = self._local
        conn = self._owner.call(
            lambda now: core.connect(remote, port, now, min_fidelity=min_fidelity, local_port=local)
        )
        self._conn = conn
        self._owner._conns[conn] = self
        (event,) = await self._bounded(self._connected.take(1, None))
        self._local = event.local_port
        self.peer = (event.remote, event.remote_port)

    # -- messages ------------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Queue a message (whole, in order); waits while the peer's window is full."""
        conn = self._conn_id()
        core = self._owner.transport.core
        self._owner.call(core.send, conn, bytes(data))
        limit = core.config.data_window_bytes

        async def drained() -> None:
            while conn in core.connections() and core.connection(conn).unsent_bytes > limit:
                if self._error is not None:
                    raise self._error
                await self._owner.transport.progress()

        await self._bounded(drained())

    async def recv(self) -> bytes:
        """The next message; ``b""`` once the peer closed its output and all were read."""
        conn = self._conn_id()
        core = self._owner.transport.core

        def register(k: int) -> None:
            for _ in range(k):
                self._demand(core.recv, conn)

        try:
            (data,) = await self._bounded(self._data.take(1, register))
        except _EndOfStream:
            return b""
        return data

    # -- pairs ---------------------------------------------------------------------------------

    async def epr(self) -> Qubit:
        """This end's half of the next pair of the epr stream (corrected to Φ+)."""
        conn = self._conn_id()
        core = self._owner.transport.core

        def register(k: int) -> None:
            for _ in range(k):
                self._demand(core.epr, conn)

        (pair,) = await self._bounded(self._eprs.take(1, register))
        return self._qubit(pair.qubit, pair.fidelity, pair.number)

    async def epr_measure(
        self, n: int, basis: Basis | str | Sequence[Basis | str] = "Z"
    ) -> list[int]:
        """Outcomes of the next ``n`` pairs of the measure-directly stream, measured in
        ``basis`` (one for all, or one per pair) as they arrive (-1 for a measurement that
        failed). Both ends call it. Outcomes a cancelled call left behind come first, in the
        bases that call asked for."""
        conn = self._conn_id()
        core = self._owner.transport.core
        if isinstance(basis, Basis | str):
            bases = [parse_basis(basis)] * n
        else:
            bases = [parse_basis(b) for b in basis]
            if len(bases) != n:
                raise InvalidArgument(f"{len(bases)} bases given for {n} pairs")

        def register(k: int) -> None:
            # Slots already asked for by a cancelled call keep their bases: the new ones
            # take the last k of this call's, in runs so that the core sees few calls.
            start = n - k
            while start < n:
                end = start
                while end < n and bases[end] is bases[start]:
                    end += 1
                self._demand(core.epr_measure, conn, end - start, bases[start])
                start = end

        got = await self._bounded(self._measured.take(n, register))
        return [m.outcome for m in got]

    async def send_qubit(self, qubit: Qubit) -> None:
        """Teleport ``qubit`` to the peer; it is gone from here afterwards."""
        await self.start_send_qubit(qubit)

    def start_send_qubit(self, qubit: Qubit) -> Awaitable[None]:
        """``send_qubit`` in two steps: hand ``qubit`` to the transport now (it is gone from
        here once this returns), then await the result to learn it went. A server that
        relays several callers' requests keeps their order this way and still waits for
        each answer in its own task."""
        conn = self._conn_id()
        qubit._check()
        self._owner.call(self._owner.transport.core.send_qubit, conn, qubit.id)
        qubit.freed = True
        return self._await_sent(qubit)

    async def _await_sent(self, qubit: Qubit) -> None:
        async def sent() -> QubitSent:
            while qubit.id not in self._sent:
                if self._error is not None:
                    raise self._error
                await self._sent_wake.wait()
            return self._sent.pop(qubit.id)

        event = await self._bounded(sent())
        if not event.ok:
            raise QnetError(f"teleporting qubit {qubit.id} failed (lost)", node=self.node)

    async def recv_qubit(self) -> Qubit:
        """The next teleported qubit, corrected."""
        self._conn_id()
        try:
            (event,) = await self._bounded(self._received.take(1, None))
        except _EndOfStream:
            raise FailedPrecondition("the peer closed its output", node=self.node) from None
        return self._qubit(event.qubit, 1.0, event.number)

    # -- ending --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close this end's output (the peer's recv then ends); a listening socket stops
        listening. Returns at once; ``wait_closed`` waits for both ends."""
        if self._listening and self._local is not None:
            self._listening = False
            stream = self._owner._listeners.pop(self._local)
            for event in stream.items:
                # Accepted for a call that gave up: nobody can ever take it now.
                accepted = self._owner._unclaimed.pop(event.conn, None)
                if accepted is not None:
                    accepted.abort()
            stream.fail(FailedPrecondition("the socket was closed", node=self.node))
            self._owner.call(self._owner.transport.core.unlisten, self._local)
            return
        conn = self._conn
        if conn is None or self._error is not None or self._closed.items:
            return
        core = self._owner.transport.core
        if conn in core.connections():
            with contextlib.suppress(FailedPrecondition):  # closed already
                self._owner.call(core.close, conn)

    def abort(self) -> None:
        """End the connection at once (the peer's calls fail with ``Unreachable``), or stop
        listening and abort the connections accepted for it that nobody took; free every
        qubit the socket holds that its application did not take. Pending calls fail."""
        transport = self._owner.transport
        if self._listening and self._local is not None:
            stream = self._owner._listeners.get(self._local)
            self._listening = False
            with contextlib.suppress(QnetError):
                self._owner.call(transport.core.unlisten, self._local)
            self._owner._listeners.pop(self._local, None)
            if stream is not None:
                for event in stream.items:
                    self._owner._unclaimed.pop(event.conn, None)
                    accepted = self._owner._conns.get(event.conn)
                    if accepted is not None:
                        accepted.abort()
                stream.items.clear()
                stream.fail(FailedPrecondition("the socket was aborted", node=self.node))
            return
        conn = self._conn
        closed = bool(self._closed.items) or self._error is not None
        if conn is not None and not closed and conn in transport.core.connections():
            with contextlib.suppress(QnetError):
                returned = self._owner.call(transport.core.abort, conn)
                transport.free(returned)
        untaken = [e.qubit for e in self._eprs.items] + [e.qubit for e in self._received.items]
        self._eprs.items.clear()
        self._received.items.clear()
        if untaken:
            transport.free(tuple(untaken))
        if self._error is None:
            self._on_event(Error(conn or 0, FailedPrecondition, self.node, "socket aborted"))

    async def wait_closed(self) -> None:
        """Wait until both ends closed cleanly (raises the connection's error if it failed)."""
        if self._closed.items:
            return
        await self._bounded(self._closed.take(1, None))
        self._closed.items.append(Closed(self._conn_id()))

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------------

    def _conn_id(self) -> int:
        if self._error is not None:
            raise self._error
        if self._conn is None:
            raise FailedPrecondition("socket is not connected", node=self.node)
        return self._conn

    def _demand(self, fn: Callable[..., object], conn: int, *args: object) -> None:
        """Ask the core for answers on ``conn``. A connection the core has just ended is no
        error here: its Error or Closed event is on its way (behind the physical commands
        queued before it) and ends the wait with the connection's own error."""
        try:
            self._owner.call(fn, conn, *args)
        except NotFound:
            if conn in self._owner.transport.core.connections():
                raise

    def _qubit(self, qubit: int, fidelity: float, number: int) -> Qubit:
        return Qubit(self._owner.channel, self.node, qubit, fidelity, number)

    async def _bounded(self, call: Awaitable[T]) -> T:
        if self._timeout is None:
            return await call
        with trio.move_on_after(self._timeout) as scope:
            return await call
        assert scope.cancelled_caught
        raise Timeout(f"socket call took more than {self._timeout} s", node=self.node)

    def _on_event(self, event: TransportEvent) -> None:
        if isinstance(event, Connected):
            self._connected.push(event)
        elif isinstance(event, Data):
            self._data.push(event.data)
        elif isinstance(event, EprPair):
            self._eprs.push(event)
        elif isinstance(event, MeasuredPair):
            self._measured.push(event)
        elif isinstance(event, QubitReceived):
            self._received.push(event)
        elif isinstance(event, QubitSent):
            self._sent[event.qubit] = event
            self._sent_wake.set()
            self._sent_wake = trio.Event()
        elif isinstance(event, PeerFinished):
            self._data.final = _EndOfStream("end of stream")
            self._data.outstanding = 0
            self._data.wake()
            self._received.final = _EndOfStream("end of stream")
            self._received.wake()
        elif isinstance(event, PairsEnded):
            ended = FailedPrecondition("the connection's pair streams ended", node=self.node)
            self._eprs.outstanding = max(0, self._eprs.outstanding - event.epr_calls)
            self._eprs.final = ended
            self._eprs.wake()
            self._measured.outstanding = max(0, self._measured.outstanding - event.measure_slots)
            self._measured.final = ended
            self._measured.wake()
        elif isinstance(event, Closed):
            self._closed.push(event)
            self._forget()
        elif isinstance(event, Error):
            if event.returned_qubits:
                # Qubits handed to send_qubit whose handles are spent: nobody can free them.
                self._owner.transport.free(event.returned_qubits)
            self._error = event.exception()
            for stream in (
                self._connected,
                self._data,
                self._eprs,
                self._measured,
                self._received,
                self._closed,
            ):
                stream.fail(self._error)
            self._sent_wake.set()
            self._forget()

    def _forget(self) -> None:
        if self._conn is not None:
            self._owner._conns.pop(self._conn, None)


class _EndOfStream(QnetError):
    """Internal: the peer's output ended (``recv`` turns it into ``b""``)."""
