"""What the public API needs from a node, wherever the node runs.

``qnet.open_node`` / ``qnet.connect`` wrap a ``NodeBackend``: ``LocalBackend`` drives a node
in this process (``qnet.sim``, or a daemon's own runtime), ``RemoteBackend`` a node daemon over
its Application gRPC service. Everything is a coroutine so either can sit behind it. Qubits
cross this boundary as the node's qubit ids; the public classes wrap them in handles.

Semantics every backend keeps (the public API documents them to users):

- ``measure`` frees the qubit; a qubit the application took (``allocate``, ``epr``,
  ``recv_qubit``) is the application's until measured, freed, teleported away, or the
  application's node handle is closed (``aclose`` frees everything it still holds);
- a call cancelled while it waits leaves its answer to the next call of the same kind;
- failures are ``qnet.errors`` types naming the node that raised them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class QubitInfo:
    """A qubit handed to the application: its id at the node, and what the stack knows."""

    id: int
    #: The stack's fidelity estimate of the pair it is half of (1 for other qubits).
    fidelity: float = 1.0
    #: Which pair of the epr stream (0, 1, …) or which teleported qubit; -1 otherwise.
    number: int = -1


class SocketBackend(Protocol):
    #: This end's (node, port) once bound or connected, else None.
    @property
    def local(self) -> Address | None: ...

    #: The other end's (node, port) once connected, else None.
    @property
    def peer(self) -> Address | None: ...

    async def bind(self, port: int) -> None: ...
    async def listen(self, backlog: int | None = None) -> None: ...
    async def accept(self) -> tuple[SocketBackend, Address]: ...
    async def connect(self, address: Address, *, min_fidelity: float | None = None) -> None:
        """None: the node's default target (its network's routing fidelity threshold)."""
        ...

    async def send(self, data: bytes) -> None: ...
    async def recv(self) -> bytes: ...
    async def epr(self) -> QubitInfo: ...
    async def epr_measure(self, n: int, basis: str | Sequence[str] = "Z") -> list[int]:
        """Outcomes of the next n pairs of the measure-directly stream; ``basis`` is one basis
        for all, or one per pair."""
        ...

    async def send_qubit(self, qubit: int) -> None: ...
    async def recv_qubit(self) -> QubitInfo: ...
    async def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class NodeBackend(Protocol):
    #: The node's name in the network.
    @property
    def node(self) -> str: ...

    def socket(self) -> SocketBackend: ...

    async def allocate(self) -> QubitInfo:
        """A fresh qubit in |0⟩ from the node's memory (``NoMemory`` when it is full)."""
        ...

    async def gate(self, gate: str, qubits: tuple[int, ...], angle: float = 0.0) -> None:
        """Apply ``gate`` (a ``GateName`` value: "h", "cnot", "rx", …) to qubits it holds."""
        ...

    async def measure(self, qubit: int, basis: str = "Z") -> int:
        """Measure and free: 0 for the basis's +1 eigenstate."""
        ...

    async def free(self, qubit: int) -> None: ...

    async def aclose(self) -> None:
        """End the session: close its sockets and free every qubit it still holds."""
        ...
