"""The application API as plain blocking calls (DESIGN §7): ``qnet.connect("alice")``.

    import qnet
    with qnet.connect("bob") as bob:
        srv = bob.socket(); srv.bind(7); srv.listen()
        conn, peer = srv.accept()
        print(conn.recv(), conn.epr().measure("Z"))

Each call runs the coroutine of the same name (``qnet.api.aio``) on a trio loop in one
background thread that the process shares, and blocks until it returns; errors are the same
``qnet.errors`` types. Closing a node (or leaving its ``with``) closes its sockets and frees
every qubit it still holds; a process that exits without closing is cleaned up by its daemon
when the session's stream ends.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import trio

from qnet.api.aio import AsyncNode, AsyncQubit, AsyncSocket, open_node
from qnet.api.backend import Address
from qnet.errors import FailedPrecondition

T = TypeVar("T")

__all__ = ["Node", "Qubit", "Socket", "connect"]


class _Loop:
    """One trio run in a daemon thread; blocking callers hand it coroutines."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=self._main, name="qnet-api", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        trio.run(self._serve)

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._token = trio.lowlevel.current_trio_token()
            self._nursery = nursery
            self._ready.set()
            await trio.sleep_forever()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if threading.current_thread() is self._thread:
            raise FailedPrecondition("blocking qnet calls inside async code: use qnet.open_node")
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    async def hold_node(self, target: Any, run_dir: str | None) -> _Held:
        """Open a node in a task of its own (its context must end in the task that began
        it) and hand it back once it is open."""
        assert self._nursery is not None
        held: _Held = await self._nursery.start(_hold, target, run_dir)
        return held


class _Held:
    def __init__(self, node: AsyncNode) -> None:
        self.node = node
        self.close = trio.Event()
        self.closed = trio.Event()

    async def release(self) -> None:
        self.close.set()
        await self.closed.wait()


async def _hold(target: Any, run_dir: str | None, *, task_status: Any) -> None:
    held: _Held | None = None
    try:
        async with open_node(target, run_dir=run_dir) as node:
            held = _Held(node)
            task_status.started(held)
            await held.close.wait()
    finally:
        if held is not None:
            held.closed.set()


_loop: _Loop | None = None
_loop_lock = threading.Lock()


def _shared_loop() -> _Loop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = _Loop()
        return _loop


class Qubit:
    """A qubit the application holds; gates and measurement block until done."""

    def __init__(self, loop: _Loop, qubit: AsyncQubit) -> None:
        self._loop = loop
        self._q = qubit

    def __repr__(self) -> str:
        return repr(self._q).replace("AsyncQubit", "Qubit")

    @property
    def id(self) -> int:
        return self._q.id

    @property
    def fidelity(self) -> float:
        return self._q.fidelity

    @property
    def number(self) -> int:
        return self._q.number

    def h(self) -> None:
        self._loop.run(self._q.h)

    def x(self) -> None:
        self._loop.run(self._q.x)

    def y(self) -> None:
        self._loop.run(self._q.y)

    def z(self) -> None:
        self._loop.run(self._q.z)

    def s(self) -> None:
        self._loop.run(self._q.s)

    def sdg(self) -> None:
        self._loop.run(self._q.sdg)

    def t(self) -> None:
        self._loop.run(self._q.t)

    def tdg(self) -> None:
        self._loop.run(self._q.tdg)

    def rx(self, theta: float) -> None:
        self._loop.run(self._q.rx, theta)

    def ry(self, theta: float) -> None:
        self._loop.run(self._q.ry, theta)

    def rz(self, theta: float) -> None:
        self._loop.run(self._q.rz, theta)

    def cnot(self, target: Qubit) -> None:
        self._loop.run(self._q.cnot, _unwrap(target))

    def cz(self, other: Qubit) -> None:
        self._loop.run(self._q.cz, _unwrap(other))

    def swap(self, other: Qubit) -> None:
        self._loop.run(self._q.swap, _unwrap(other))

    def measure(self, basis: str = "Z") -> int:
        return self._loop.run(self._q.measure, basis)

    def free(self) -> None:
        self._loop.run(self._q.free)


def _unwrap(qubit: Qubit) -> AsyncQubit:
    return qubit._q if isinstance(qubit, Qubit) else qubit


class Socket:
    """A socket of the node; every method blocks until its answer (see ``settimeout``)."""

    def __init__(self, loop: _Loop, sock: AsyncSocket) -> None:
        self._loop = loop
        self._s = sock

    @property
    def local(self) -> Address | None:
        return self._s.local

    @property
    def peer(self) -> Address | None:
        return self._s.peer

    def settimeout(self, seconds: float | None) -> None:
        self._s.settimeout(seconds)

    def gettimeout(self) -> float | None:
        return self._s.gettimeout()

    def bind(self, port: int) -> None:
        self._loop.run(self._s.bind, port)

    def listen(self, backlog: int | None = None) -> None:
        self._loop.run(self._s.listen, backlog)

    def accept(self) -> tuple[Socket, Address]:
        sock, peer = self._loop.run(self._s.accept)
        return Socket(self._loop, sock), peer

    def connect(self, address: Address, *, min_fidelity: float | None = None) -> None:
        async def connect() -> None:
            await self._s.connect(address, min_fidelity=min_fidelity)

        self._loop.run(connect)

    def send(self, data: bytes) -> None:
        self._loop.run(self._s.send, data)

    def recv(self) -> bytes:
        return self._loop.run(self._s.recv)

    def epr(self) -> Qubit:
        return Qubit(self._loop, self._loop.run(self._s.epr))

    def epr_measure(self, n: int, basis: str | Sequence[str] = "Z") -> list[int]:
        return self._loop.run(self._s.epr_measure, n, basis)

    def send_qubit(self, qubit: Qubit) -> None:
        self._loop.run(self._s.send_qubit, _unwrap(qubit))

    def recv_qubit(self) -> Qubit:
        return Qubit(self._loop, self._loop.run(self._s.recv_qubit))

    def close(self) -> None:
        self._loop.run(self._s.close)

    def wait_closed(self) -> None:
        self._loop.run(self._s.wait_closed)

    def __enter__(self) -> Socket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Node:
    """A node of the running network, for blocking code (``qnet.connect``)."""

    def __init__(self, loop: _Loop, held: _Held) -> None:
        self._loop = loop
        self._held = held

    def __repr__(self) -> str:
        return f"<Node {self.name}>"

    @property
    def name(self) -> str:
        return self._held.node.name

    @property
    def aio(self) -> AsyncNode:
        """The same node for trio code running on the API's loop."""
        return self._held.node

    def socket(self) -> Socket:
        return Socket(self._loop, self._held.node.socket())

    def qubit(self) -> Qubit:
        return Qubit(self._loop, self._loop.run(self._held.node.qubit))

    def close(self) -> None:
        """Close its sockets and free every qubit still held (idempotent)."""
        self._loop.run(self._held.release)

    def __enter__(self) -> Node:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(target: str, *, run_dir: str | None = None) -> Node:
    """The node ``target`` names: a node of the network ``qnet up`` started (looked up in
    ``run_dir``, ``$QNET_RUN_DIR`` or ``./.qnet-run``) or a daemon's ``host:port``."""
    loop = _shared_loop()
    held = loop.run(loop.hold_node, target, run_dir)
    return Node(loop, held)
