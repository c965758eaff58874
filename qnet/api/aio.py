"""The application API as trio coroutines (DESIGN §7): ``async with qnet.open_node(...)``.

    async with qnet.open_node("alice") as alice:
        async with alice.socket() as c:
            await c.connect(("bob", 7))
            await c.send(b"hi")
            q = await c.epr()                       # the k-th halves at both ends form Φ+
            bits = await c.epr_measure(100, basis="Z")
        q = await alice.qubit(); await q.h(); m = await q.measure("X")

``open_node`` takes a node name (resolved through the run directory ``qnet up`` wrote, or
``$QNET_RUN_DIR``), a ``host:port``, or a node running in this process (a ``qnet.sim``
``NodeRuntime``), so an application runs unchanged against daemons or the simulator.

Conventions: RX/RY/RZ(θ) = exp(−iθσ/2); measuring in X or Y gives 0 for the +1 eigenstate;
``measure`` frees the qubit and using it afterwards is an error (``FailedPrecondition``).
``settimeout(seconds)`` bounds each call of a socket with ``Timeout``; a call cancelled while it
waits leaves its answer to the next call of the same kind. Leaving the node's ``async with``
closes its sockets and frees every qubit the application still holds.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import trio

from qnet.api.backend import Address, NodeBackend, QubitInfo, SocketBackend
from qnet.errors import FailedPrecondition, InvalidArgument, Timeout

if TYPE_CHECKING:
    from qnet.node.runtime import NodeRuntime

T = TypeVar("T")

__all__ = ["AsyncNode", "AsyncQubit", "AsyncSocket", "open_node"]


class AsyncQubit:
    """A qubit of the node that the application holds."""

    def __init__(self, node: AsyncNode, info: QubitInfo) -> None:
        self._node = node
        self.id = info.id
        #: The stack's fidelity estimate of the pair this is half of (1 otherwise).
        self.fidelity = info.fidelity
        #: Which pair of the epr stream (or which received qubit) this is; -1 otherwise.
        self.number = info.number
        self._gone = False

    def __repr__(self) -> str:
        state = "gone" if self._gone else "held"
        return f"<AsyncQubit {self.id} of {self._node.name} ({state})>"

    @property
    def node(self) -> AsyncNode:
        return self._node

    async def h(self) -> None:
        await self._gate("h")

    async def x(self) -> None:
        await self._gate("x")

    async def y(self) -> None:
        await self._gate("y")

    async def z(self) -> None:
        await self._gate("z")

    async def s(self) -> None:
        await self._gate("s")

    async def sdg(self) -> None:
        await self._gate("sdg")

    async def t(self) -> None:
        await self._gate("t")

    async def tdg(self) -> None:
        await self._gate("tdg")

    async def rx(self, theta: float) -> None:
        await self._gate("rx", angle=theta)

    async def ry(self, theta: float) -> None:
        await self._gate("ry", angle=theta)

    async def rz(self, theta: float) -> None:
        await self._gate("rz", angle=theta)

    async def cnot(self, target: AsyncQubit) -> None:
        """CNOT with this qubit as control."""
        await self._gate("cnot", target)

    async def cz(self, other: AsyncQubit) -> None:
        await self._gate("cz", other)

    async def swap(self, other: AsyncQubit) -> None:
        await self._gate("swap", other)

    async def measure(self, basis: str = "Z") -> int:
        """Measure and free the qubit: 0 for the basis's +1 eigenstate."""
        self._check()
        self._gone = True
        return await self._node._backend.measure(self.id, basis)

    async def free(self) -> None:
        """Give the qubit back to the node without measuring it (no-op if already gone)."""
        if not self._gone:
            self._gone = True
            await self._node._backend.free(self.id)

    async def _gate(self, gate: str, other: AsyncQubit | None = None, angle: float = 0.0) -> None:
        self._check()
        if not isinstance(angle, int | float) or not math.isfinite(angle):
            raise InvalidArgument(f"a rotation angle is a finite number, got {angle!r}")
        qubits: tuple[int, ...] = (self.id,)
        if other is not None:
            if not isinstance(other, AsyncQubit):
                raise InvalidArgument(f"{gate} takes a qubit, got {type(other).__name__}")
            if other._node is not self._node:
                raise InvalidArgument(
                    f"{gate} between qubits of different nodes: use a distributed gate"
                )
            if other is self:
                raise InvalidArgument(f"{gate} of a qubit with itself")
            other._check()
            qubits += (other.id,)
        await self._node._backend.gate(gate, qubits, float(angle))

    def _check(self) -> None:
        if self._gone:
            raise FailedPrecondition(
                f"qubit {self.id} was measured, freed or sent", node=self._node.name
            )


class AsyncSocket:
    """A socket of the node: bind/listen/accept, or connect; then messages, pairs, qubits."""

    def __init__(self, node: AsyncNode, backend: SocketBackend) -> None:
        self._node = node
        self._backend = backend
        self._timeout: float | None = None

    @property
    def local(self) -> Address | None:
        """This end's (node, port) once bound or connected."""
        return self._backend.local

    @property
    def peer(self) -> Address | None:
        """The other end's (node, port) once connected."""
        return self._backend.peer

    def settimeout(self, seconds: float | None) -> None:
        """Bound each later call (``Timeout``); None waits as long as it takes."""
        if seconds is not None and (
            not isinstance(seconds, int | float) or not seconds > 0 or math.isnan(seconds)
        ):
            raise InvalidArgument(f"a timeout is a number of seconds > 0 or None, got {seconds!r}")
        self._timeout = None if seconds is None else float(seconds)

    def gettimeout(self) -> float | None:
        return self._timeout

    async def bind(self, port: int) -> None:
        await self._bounded(self._backend.bind(port))

    async def listen(self, backlog: int | None = None) -> None:
        await self._bounded(self._backend.listen(backlog))

    async def accept(self) -> tuple[AsyncSocket, Address]:
        """The next connection to this port and its peer (node, port)."""
        sock, peer = await self._bounded(self._backend.accept())
        return AsyncSocket(self._node, sock), peer

    async def connect(self, address: Address, *, min_fidelity: float | None = None) -> None:
        """Connect to ``(node, port)``. Pairs meet ``min_fidelity`` when delivered; by default
        the network's routing fidelity threshold (``[routing] fidelity_threshold``, 0.8 unless
        the topology says otherwise); 0 asks for the fastest pairs whatever their fidelity."""
        if not isinstance(address, tuple) or len(address) != 2:
            raise InvalidArgument(f"an address is (node, port), got {address!r}")
        await self._bounded(self._backend.connect(address, min_fidelity=min_fidelity))

    async def send(self, data: bytes) -> None:
        """Send one message (delivered whole, in order, reliably)."""
        await self._bounded(self._backend.send(data))

    async def recv(self) -> bytes:
        """The next message; ``b""`` once the peer closed its output and all were read."""
        return await self._bounded(self._backend.recv())

    async def epr(self) -> AsyncQubit:
        """This end's half of the next pair of the connection (corrected to Φ+)."""
        return AsyncQubit(self._node, await self._bounded(self._backend.epr()))

    async def epr_measure(self, n: int, basis: str | Sequence[str] = "Z") -> list[int]:
        """Outcomes of the next ``n`` measure-directly pairs, in ``basis`` (one for all, or
        one per pair); both ends call it. -1 marks a measurement that failed."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument(f"n must be an integer ≥ 1, got {n!r}")
        if not isinstance(basis, str):
            basis = list(basis)
            if len(basis) != n:
                raise InvalidArgument(f"{len(basis)} bases given for {n} pairs")
        return await self._bounded(self._backend.epr_measure(n, basis))

    async def send_qubit(self, qubit: AsyncQubit) -> None:
        """Teleport ``qubit`` to the peer; it is gone from here afterwards."""
        if not isinstance(qubit, AsyncQubit):
            raise InvalidArgument(f"send_qubit takes a qubit, got {type(qubit).__name__}")
        if qubit._node is not self._node:
            raise InvalidArgument("send_qubit of a qubit of another node")
        qubit._check()
        qubit._gone = True
        await self._bounded(self._backend.send_qubit(qubit.id))

    async def recv_qubit(self) -> AsyncQubit:
        """The next qubit the peer teleported, corrected."""
        return AsyncQubit(self._node, await self._bounded(self._backend.recv_qubit()))

    async def close(self) -> None:
        """Close this end's output (the peer's ``recv`` then ends); returns at once."""
        await self._backend.close()

    async def wait_closed(self) -> None:
        """Wait until both ends closed (raises the connection's error if it failed)."""
        await self._bounded(self._backend.wait_closed())

    async def __aenter__(self) -> AsyncSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _bounded(self, call: Awaitable[T]) -> T:
        if self._timeout is None:
            return await call
        with trio.move_on_after(self._timeout) as scope:
            return await call
        assert scope.cancelled_caught
        raise Timeout(f"socket call took more than {self._timeout:g} s", node=self._node.name)


class AsyncNode:
    """One node of the network, as an application uses it."""

    def __init__(self, backend: NodeBackend) -> None:
        self._backend = backend
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncNode {self.name}>"

    @property
    def name(self) -> str:
        return self._backend.node

    @property
    def backend(self) -> NodeBackend:
        return self._backend

    def socket(self) -> AsyncSocket:
        self._check()
        return AsyncSocket(self, self._backend.socket())

    async def qubit(self) -> AsyncQubit:
        """A fresh qubit in |0⟩ from the node's memory (``NoMemory`` when full)."""
        self._check()
        return AsyncQubit(self, await self._backend.allocate())

    async def aclose(self) -> None:
        """Close every socket and free every qubit this application still holds."""
        if not self._closed:
            self._closed = True
            with trio.CancelScope(shield=True):
                await self._backend.aclose()

    async def __aenter__(self) -> AsyncNode:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check(self) -> None:
        if self._closed:
            raise FailedPrecondition("the node handle was closed", node=self.name)


@asynccontextmanager
async def open_node(
    target: str | NodeRuntime, *, run_dir: str | None = None
) -> AsyncGenerator[AsyncNode, None]:
    """The node ``target`` names: a node name of the network ``qnet up`` started (found in
    ``run_dir``, ``$QNET_RUN_DIR`` or ``./.qnet-run``), a daemon's ``host:port``, or a
    ``NodeRuntime`` of this process (``qnet.sim``)."""
    from qnet.node.runtime import NodeRuntime

    if isinstance(target, NodeRuntime):
        from qnet.api.local import LocalBackend

        node = AsyncNode(LocalBackend(target))
        try:
            yield node
        finally:
            await node.aclose()
        return
    if not isinstance(target, str):
        raise InvalidArgument(
            f"open_node takes a node name, host:port or a NodeRuntime, got {target!r}"
        )
    from qnet.api.remote import open_remote
    from qnet.api.resolve import resolve

    address, tls = resolve(target, run_dir)
    async with open_remote(address, tls) as backend:
        node = AsyncNode(backend)
        try:
            yield node
        finally:
            await node.aclose()
