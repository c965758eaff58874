"""In-process access to a channel backend: the Channel API handlers called directly.

``qnet.sim`` uses this in place of gRPC: the same ``ChannelServer`` (sessions, herald timer,
event queues) and the same request messages, without sockets or threads.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager

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
        return await self.server.execute(
            pb.ExecuteRequest(protocol_version=V, session=self.token, ops=ops)
        )

    def close(self, reason: str = "the node stopped") -> None:
        """End this session at the backend (its qubits are freed); the node must register
        again to come back."""
        self.server.end_session(self.token, reason)

    @asynccontextmanager
    async def heralds(self) -> AsyncGenerator[AsyncIterator[HeraldEvent], None]:
        events = self.server.events(pb.EventsRequest(protocol_version=V, session=self.token))
        async with aclosing(events) as stream:
            yield await wire.heralds_after_subscription(self.node, stream)
