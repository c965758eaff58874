"""What the transport core binds to what: ports to listeners, circuits to connections.

``PortTable``: listeners with their accept queues and backlogs, and ephemeral ports.
``CircuitTable``: which connection a circuit carries pairs for; pairs of a circuit no
connection has claimed yet (its ``HandshakeAck`` is late: *orphans*, kept for a while); and
circuits of connections that ended, whose pairs are freed as they come until the network
layer says the circuit closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from qnet.errors import (
    AlreadyExists,
    InvalidArgument,
    NoMemory,
    NotFound,
    PermissionDenied,
    QnetError,
    Timeout,
    Unreachable,
    Unsupported,
)
from qnet.network.circuit_events import CircuitId, CloseCode
from qnet.transport.events import ConnId
from qnet.transport.pairs import HeldPair

#: Ports ``connect`` picks from when the caller names none (IANA's dynamic range).
EPHEMERAL_PORTS = range(49152, 65536)


def check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgument(f"a port is an integer in [1, 65535], got {port!r}")


@dataclass(slots=True)
class Listener:
    port: int
    backlog: int
    #: Connections in SYN_RECEIVED, and established ones waiting for ``accept``.
    handshaking: set[ConnId] = field(default_factory=set)
    ready: deque[ConnId] = field(default_factory=deque)
    #: ``accept`` calls not answered yet.
    accept_wanted: int = 0

    @property
    def full(self) -> bool:
        return len(self.handshaking) + len(self.ready) >= self.backlog

    def forget(self, conn_id: ConnId) -> None:
        self.handshaking.discard(conn_id)
        if conn_id in self.ready:
            self.ready.remove(conn_id)


class PortTable:
    def __init__(self, node: str) -> None:
        self.node = node
        self.listeners: dict[int, Listener] = {}
        self._next_ephemeral = EPHEMERAL_PORTS.start

    def listen(self, port: int, backlog: int) -> None:
        check_port(port)
        if port in self.listeners:
            raise AlreadyExists(f"port {port} already has a listener", node=self.node)
        self.listeners[port] = Listener(port, backlog)

    def listener(self, port: int) -> Listener:
        try:
            return self.listeners[port]
        except KeyError:
            raise NotFound(f"no listener on port {port}", node=self.node) from None

    def ephemeral(self, used: set[int]) -> int:
        """A free port for ``connect``, round robin over the dynamic range (a port freed a
        moment ago is the last to be picked again)."""
        for _ in EPHEMERAL_PORTS:
            port = self._next_ephemeral
            following = port + 1
            self._next_ephemeral = (
                following if following < EPHEMERAL_PORTS.stop else (EPHEMERAL_PORTS.start)
            )
            if port not in used and port not in self.listeners:
                return port
        raise NoMemory(f"{self.node} has no ephemeral port free", node=self.node)


_CIRCUIT_ERRORS: dict[CloseCode, type[QnetError]] = {
    CloseCode.UNREACHABLE: Unreachable,
    CloseCode.UNSUPPORTED: Unsupported,
    CloseCode.NO_MEMORY: NoMemory,
    CloseCode.TIMEOUT: Timeout,
    CloseCode.DENIED: PermissionDenied,
}


def circuit_error(code: CloseCode) -> type[QnetError]:
    """The error a connection fails with when its circuit ends under it. A circuit closed or
    completed while the connection still needs it is as good as unreachable."""
    return _CIRCUIT_ERRORS.get(code, Unreachable)


@dataclass(slots=True)
class _Orphan:
    pairs: list[HeldPair]
    deadline_ns: int


class CircuitTable:
    def __init__(self, orphan_timeout_ns: int) -> None:
        self._orphan_timeout_ns = orphan_timeout_ns
        self._conn_of: dict[CircuitId, ConnId] = {}
        self._orphans: dict[CircuitId, _Orphan] = {}
        self._dead: set[CircuitId] = set()

    def conn_of(self, circuit: CircuitId) -> ConnId | None:
        return self._conn_of.get(circuit)

    def bind(self, circuit: CircuitId, conn_id: ConnId) -> list[HeldPair]:
        """Bind ``circuit`` to a connection; returns its orphan pairs, in index order."""
        self._conn_of[circuit] = conn_id
        orphan = self._orphans.pop(circuit, None)
        return sorted(orphan.pairs, key=lambda p: p.index) if orphan is not None else []

    def unbind(self, circuit: CircuitId, *, still_open: bool) -> None:
        """Its connection ended; if the circuit has not closed yet, free its pairs as they
        come until it has."""
        self._conn_of.pop(circuit, None)
        if still_open:
            self._dead.add(circuit)

    def park(self, circuit: CircuitId, pair: HeldPair, now: int) -> bool:
        """A pair of a circuit no connection holds: keep it as an orphan (True), or False if
        its connection ended (the caller frees it)."""
        if circuit in self._dead:
            return False
        orphan = self._orphans.setdefault(circuit, _Orphan([], now + self._orphan_timeout_ns))
        orphan.pairs.append(pair)
        return True

    def closed(self, circuit: CircuitId) -> tuple[int, ...]:
        """The circuit ended: forget it; returns the qubits of its orphans, to free."""
        self._dead.discard(circuit)
        orphan = self._orphans.pop(circuit, None)
        return tuple(p.qubit for p in orphan.pairs) if orphan is not None else ()

    def expire(self, now: int) -> list[tuple[CircuitId, tuple[int, ...]]]:
        """Orphans nobody claimed in time (their handshake failed): the circuits to close and
        the qubits to free."""
        gone = []
        for circuit, orphan in list(self._orphans.items()):
            if orphan.deadline_ns <= now:
                del self._orphans[circuit]
                self._dead.add(circuit)
                gone.append((circuit, tuple(p.qubit for p in orphan.pairs)))
        return gone

    def deadlines(self) -> Iterator[int]:
        for orphan in self._orphans.values():
            yield orphan.deadline_ns

    def held_qubits(self) -> list[int]:
        return [p.qubit for o in self._orphans.values() for p in o.pairs]
