"""What a node driver needs from the outside world, as small protocols.

A node runs the same driver code in a daemon and in ``qnet.sim``; only these two parts differ:
its access to the channel backend (gRPC to qnet-channeld, or direct calls in one process) and
its peer transport (gRPC Exchange streams, or in-memory channels with fibre delays).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from qnet.node.peer_wire import WireMessage
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import Basis, GateName
from qnet.physical.params import LinkParams
from qnet.v1 import channel_pb2 as pb


class LinkTheoryLike(Protocol):
    @property
    def rate_hz(self) -> float: ...
    @property
    def fidelity(self) -> float: ...
    @property
    def last_sequence(self) -> int: ...


class ChannelAccess(Protocol):
    """The Channel API as one registered node sees it (``qnet.channel.client.NodeSession`` and
    ``qnet.sim``'s in-process session both provide it)."""

    node: str

    async def declare_link(self, peer: str, params: LinkParams) -> LinkTheoryLike: ...
    async def allocate(self, count: int = 1) -> list[int]: ...
    async def free(self, qubits: Sequence[int]) -> None: ...
    async def gate(self, gate: GateName, *qubits: int, angle: float = 0.0) -> None: ...
    async def measure(self, qubit: int, basis: Basis = Basis.Z, *, keep: bool = False) -> int: ...
    async def bell_measure(self, qubit_a: int, qubit_b: int) -> int: ...
    async def start_generation(
        self, peer: str, qubits: Sequence[int], *, bright_state: float | None = None
    ) -> int: ...
    async def stop_generation(self, peer: str) -> list[int]: ...
    async def execute(self, ops: Sequence[pb.Operation]) -> pb.ExecuteResponse: ...
    def heralds(self) -> AbstractAsyncContextManager[AsyncIterator[HeraldEvent]]: ...


#: Called in the node's trio thread with the sender and the messages of one received batch
#: (of any layer: the node dispatches them by family).
Deliver = Callable[[str, Sequence[WireMessage]], None]
#: Called in the node's trio thread when messages to a neighbour gain (True) or lose (False) a
#: live path, so routing need not wait for its dead interval to notice.
LinkChanged = Callable[[str, bool], None]
#: Called with a neighbour's name when its daemon turns out to be a new process (before
#: anything it sent on its new stream is delivered).
PeerRestarted = Callable[[str], None]


class PeerTransport(Protocol):
    """Classical messages to and from neighbours. Delivery may lose, duplicate or reorder
    messages (the protocols above cope); it never blocks the sender."""

    async def run(
        self,
        deliver: Deliver,
        *,
        link_changed: LinkChanged | None = None,
        peer_restarted: PeerRestarted | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled: ship what ``send`` queued, pass what arrives to
        ``deliver``, report each change of ``connected(peer)`` to ``link_changed`` and each
        restart of a neighbour's process to ``peer_restarted``."""
        ...

    def send(self, peer: str, messages: Sequence[WireMessage]) -> None:
        """Queue ``messages`` for ``peer``; everything queued before the next batch is taken
        goes in one gRPC message."""
        ...

    def connected(self, peer: str) -> bool:
        """Whether messages to ``peer`` currently have a live path."""
        ...
