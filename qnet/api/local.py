"""``LocalBackend``: the public API over a node running in this process.

A ``qnet.sim`` network's nodes (``NodeRuntime``) run in the caller's trio run, so the API talks
to their transport layer and channel session directly: no serialisation, no RPC. Every qubit
the application takes is counted against the node's memory (``NodeRuntime.hold_qubits``) until
it is measured, freed or teleported away, and ``aclose`` frees whatever is left.
"""

from __future__ import annotations

from collections.abc import Sequence

from qnet.api.backend import Address, QubitInfo
from qnet.errors import InvalidArgument, NotFound
from qnet.node.runtime import NodeRuntime
from qnet.physical.gates import GATES, parse_basis, parse_gate
from qnet.sockets import Qubit, Socket
from qnet.transport.bindings import check_port

#: How long (wall-clock seconds at the network's time scale) ``qubit()`` waits for the link
#: layers to hand back memory before ``NoMemory``.
ALLOCATE_TIMEOUT_S = 1.0


class LocalSocket:
    def __init__(self, backend: LocalBackend, socket: Socket) -> None:
        self._backend = backend
        self._socket = socket

    @property
    def local(self) -> Address | None:
        port = self._socket._local
        return None if port is None else (self._backend.node, port)

    @property
    def peer(self) -> Address | None:
        return self._socket.peer

    async def bind(self, port: int) -> None:
        check_port(port)
        self._socket.bind(port)

    async def listen(self, backlog: int | None = None) -> None:
        self._socket.listen(backlog)

    async def accept(self) -> tuple[LocalSocket, Address]:
        sock, peer = await self._socket.accept()
        return self._backend._wrap(sock), peer

    async def connect(self, address: Address, *, min_fidelity: float | None = None) -> None:
        node, port = address
        check_port(port)
        await self._socket.connect((str(node), port), min_fidelity=min_fidelity)

    async def send(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgument(f"send takes bytes, got {type(data).__name__}")
        await self._socket.send(bytes(data))

    async def recv(self) -> bytes:
        return await self._socket.recv()

    async def epr(self) -> QubitInfo:
        return self._backend._took(await self._socket.epr())

    async def epr_measure(self, n: int, basis: str | Sequence[str] = "Z") -> list[int]:
        return await self._socket.epr_measure(n, basis)

    async def send_qubit(self, qubit: int) -> None:
        handle = self._backend._held(qubit)
        sent = self._socket.start_send_qubit(handle)
        # The transport holds it now (and counts it against the node's memory): counted here
        # too, a few qubits in flight would fill the memory their pairs need.
        self._backend._release(qubit)
        await sent

    async def recv_qubit(self) -> QubitInfo:
        return self._backend._took(await self._socket.recv_qubit())

    async def close(self) -> None:
        self._backend._sockets.discard(self)
        await self._socket.close()

    async def wait_closed(self) -> None:
        await self._socket.wait_closed()


class LocalBackend:
    """The API's view of one in-process node; one per ``open_node``."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self._qubits: dict[int, Qubit] = {}
        self._sockets: set[LocalSocket] = set()

    @property
    def node(self) -> str:
        return self.runtime.name

    def socket(self) -> LocalSocket:
        return self._wrap(self.runtime.transport_layer.socket())

    async def allocate(self) -> QubitInfo:
        timeout_ns = int(ALLOCATE_TIMEOUT_S * self.runtime.clock.scale * 1e9)
        qubit = await self.runtime.allocate_qubit(timeout_ns=timeout_ns)
        self._qubits[qubit] = Qubit(self.runtime.channel, self.node, qubit)
        return QubitInfo(qubit)

    async def gate(self, gate: str, qubits: tuple[int, ...], angle: float = 0.0) -> None:
        name = parse_gate(gate)
        arity = GATES[name].arity
        if len(qubits) != arity:
            raise InvalidArgument(f"gate {name.value} acts on {arity} qubits, got {len(qubits)}")
        for q in qubits:
            self._held(q)
        await self.runtime.channel.gate(name, *qubits, angle=float(angle))

    async def measure(self, qubit: int, basis: str = "Z") -> int:
        b = parse_basis(basis)
        handle = self._held(qubit)
        self._release(qubit)
        return await handle.measure(b)

    async def free(self, qubit: int) -> None:
        handle = self._held(qubit)
        self._release(qubit)
        await handle.free()

    async def aclose(self) -> None:
        for sock in list(self._sockets):
            await sock.close()
        left = [q for q, h in self._qubits.items() if not h.freed]
        self.runtime.release_qubits(self._qubits)
        self._qubits.clear()
        if left:
            await self.runtime.channel.free(left)

    # -- internals -----------------------------------------------------------------------------

    def _wrap(self, socket: Socket) -> LocalSocket:
        wrapped = LocalSocket(self, socket)
        self._sockets.add(wrapped)
        return wrapped

    def _took(self, qubit: Qubit) -> QubitInfo:
        self._take(qubit)
        return QubitInfo(qubit.id, qubit.fidelity, qubit.number)

    def _take(self, qubit: Qubit) -> None:
        self._qubits[qubit.id] = qubit
        self.runtime.hold_qubits((qubit.id,))

    def _held(self, qubit: int) -> Qubit:
        handle = self._qubits.get(qubit)
        if handle is None or handle.freed:
            raise NotFound(
                f"qubit {qubit} is not held by this application (measured, freed or sent?)",
                node=self.node,
            )
        return handle

    def _release(self, qubit: int) -> None:
        self._qubits.pop(qubit, None)
        self.runtime.release_qubits((qubit,))
