"""In-process access to a channel backend: the Channel API handlers called directly.

``qnet.sim`` uses this in place of gRPC: the same ``ChannelServer`` (sessions, herald timer,
event queues) and the same request messages, without sockets or threads. Heralds come straight
from the server's dispatch (``ChannelServer.stream_locally``), not as wire events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from qnet.channel import wire
from qnet.channel.client import LinkTheory
from qnet.channel.server import ChannelServer
from qnet.channel.wire import PROTOCOL_VERSION as V
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import Basis, GateName
from qnet.physical.params import LinkParams, NodeParams
from qnet.v1 import channel_pb2 as pb


class LocalSession:
    """A registered node's view of an in-process ``ChannelServer`` (see ``ChannelAccess``)."""

    def __init__(self, server: ChannelServer, node: str, token: str) -> None:
        self.server = server
        self.node = node
        self.token = token

    @classmethod
    async def register(
        cls, server: ChannelServer, node: str, params: NodeParams, *, takeover: bool = False
    ) -> LocalSession:
        resp = await server.register(
            pb.RegisterRequest(
                protocol_version=V,
                node=node,
                memory_qubits=params.memory_qubits,
                noise=wire.node_noise_to_wire(params),
                takeover=takeover,
            )
        )
        return cls(server, node, resp.session)

    async def declare_link(self, peer: str, params: LinkParams) -> LinkTheory:
        resp = await self.server.declare_link(
            pb.DeclareLinkRequest(
                protocol_version=V,
                session=self.token,
                peer=peer,
                params=wire.link_params_to_wire(params),
            )
        )
        return LinkTheory(resp.theory, resp.last_sequence)

    async def allocate(self, count: int = 1) -> list[int]:
        resp = await self.server.allocate(
            pb.AllocateRequest(protocol_version=V, session=self.token, count=count)
        )
        return list(resp.qubits)

    async def free(self, qubits: Sequence[int]) -> None:
        await self.server.free(
            pb.FreeRequest(protocol_version=V, session=self.token, qubits=qubits)
        )

    async def gate(self, gate: GateName, *qubits: int, angle: float = 0.0) -> None:
        await self.server.apply_gate(
            pb.GateRequest(
                protocol_version=V,
                session=self.token,
                gate=wire.GATE_TO_WIRE[gate],
                qubits=qubits,
                angle=angle,
            )
        )

    async def measure(self, qubit: int, basis: Basis = Basis.Z, *, keep: bool = False) -> int:
        resp = await self.server.measure(
            pb.MeasureRequest(
                protocol_version=V,
                session=self.token,
                qubit=qubit,
                basis=wire.BASIS_TO_WIRE[basis],
                keep=keep,
            )
        )
        return resp.outcome

    async def bell_measure(self, qubit_a: int, qubit_b: int) -> int:
        resp = await self.server.bell_measure(
            pb.BellMeasureRequest(
                protocol_version=V, session=self.token, qubit_a=qubit_a, qubit_b=qubit_b
            )
        )
        return resp.bell_index

    async def start_generation(
        self, peer: str, qubits: Sequence[int], *, bright_state: float | None = None
    ) -> int:
        resp = await self.server.start_generation(
            pb.StartGenerationRequest(
                protocol_version=V,
                session=self.token,
                peer=peer,
                qubits=qubits,
                bright_state=bright_state or 0.0,
            )
        )
        return resp.armed

    async def stop_generation(self, peer: str) -> list[int]:
        resp = await self.server.stop_generation(
            pb.StopGenerationRequest(protocol_version=V, session=self.token, peer=peer)
        )
        return list(resp.disarmed)

    async def execute(self, ops: Sequence[pb.Operation]) -> pb.ExecuteResponse:
        return self.server.run_operations(self.token, ops)

    def close(self, reason: str = "the node stopped") -> None:
        """End this session at the backend (its qubits are freed); the node must register
        again to come back."""
        self.server.end_session(self.token, reason)

    @asynccontextmanager
    async def heralds(self) -> AsyncGenerator[AsyncIterator[HeraldEvent], None]:
        stream = _HeraldStream()
        close = self.server.stream_locally(self.token, stream.push)
        try:
            yield stream
        finally:
            close()


class _HeraldStream:
    """The heralds the server pushes, as an async iterator that returns at once while any
    are queued: the node takes all the heralds of an instant in one step of its task, and
    a herald costs no protobuf message either way."""

    def __init__(self) -> None:
        self._queued: deque[HeraldEvent] = deque()
        self._ended = False
        self._waiter: trio.lowlevel.Task | None = None

    def push(self, event: HeraldEvent | None) -> None:
        """A herald, or None: the session ended (the iteration stops after the queue)."""
        if event is None:
            self._ended = True
        else:
            self._queued.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def __aiter__(self) -> _HeraldStream:
        return self

    async def __anext__(self) -> HeraldEvent:
        while not self._queued:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self._queued.popleft()
