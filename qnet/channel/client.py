"""A trio client of the Channel API: what a node daemon, a demo or a benchmark uses to talk to
qnet-channeld. Remote errors come back as the same ``qnet.errors`` types the backend raised."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager

import grpc

from qnet.channel import wire
from qnet.channel.execute_pipe import ExecutePipe
from qnet.channel.wire import PROTOCOL_VERSION
from qnet.errors import QnetError, Unreachable, error_from_wire
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import Basis, GateName
from qnet.physical.heralding import HeraldingModel
from qnet.physical.params import LinkParams, NodeParams
from qnet.runtime.grpc_bridge import (
    close_channel,
    error_type_name,
    server_stream,
    unary_call,
)
from qnet.security.tls import ClientTLS, client_channel
from qnet.v1 import channel_pb2 as pb
from qnet.v1 import channel_pb2_grpc as pb_grpc

V = PROTOCOL_VERSION


def rpc_error_to_qnet(error: grpc.RpcError, *, where: str) -> QnetError:
    """Map a failed RPC to the typed error the remote side raised (or Unreachable)."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    type_name = error_type_name(error)
    if type_name is None and code == grpc.StatusCode.UNAVAILABLE:
        return Unreachable(f"{where} is unreachable: {details}")
    return error_from_wire(type_name, details)


class LinkTheory:
    """The backend's prediction for a link (rate, fidelity) as the daemon reported it."""

    def __init__(self, msg: pb.LinkTheory, last_sequence: int = 0) -> None:
        #: The link's last herald sequence when it was declared (heralds number on from it).
        self.last_sequence = last_sequence
        self.success_probability = msg.success_probability
        self.cycle_ns = msg.cycle_ns
        self.rate_hz = msg.rate_hz
        self.fidelity = msg.fidelity
        self.transmissivity = msg.transmissivity

    @classmethod
    def from_model(cls, model: HeraldingModel) -> LinkTheory:
        return cls(wire.theory_to_wire(model))


class ChannelClient:
    """A connection to one qnet-channeld. Use ``open_channel_client`` to get one."""

    def __init__(self, address: str, channel: grpc.Channel) -> None:
        self.address = address
        self._stub = pb_grpc.ChannelStub(channel)
        self._oracle = pb_grpc.ChannelOracleStub(channel)

    def _map(self, error: grpc.RpcError) -> BaseException:
        return rpc_error_to_qnet(error, where=f"qnet-channeld at {self.address}")

    async def health(self) -> pb.HealthResponse:
        return await unary_call(
            self._stub.Health, pb.HealthRequest(protocol_version=V), error_mapper=self._map
        )

    async def now_ns(self) -> int:
        resp = await unary_call(
            self._stub.Now, pb.NowRequest(protocol_version=V), error_mapper=self._map
        )
        return resp.now_ns

    async def register(
        self, node: str, params: NodeParams | None = None, *, takeover: bool = False
    ) -> NodeSession:
        params = params or NodeParams()
        resp = await unary_call(
            self._stub.Register,
            pb.RegisterRequest(
                protocol_version=V,
                node=node,
                memory_qubits=params.memory_qubits,
                noise=wire.node_noise_to_wire(params),
                takeover=takeover,
            ),
            error_mapper=self._map,
        )
        return NodeSession(self, node, resp.session, registered_ns=resp.now_ns)

    async def oracle_pair_fidelity(self, qubit_a: int, qubit_b: int, bell_index: int) -> float:
        """Test-only: the true fidelity (needs a daemon started with --test-oracle)."""
        resp = await unary_call(
            self._oracle.PairFidelity,
            pb.PairFidelityRequest(
                protocol_version=V, qubit_a=qubit_a, qubit_b=qubit_b, bell_index=bell_index
            ),
            error_mapper=self._map,
        )
        return resp.fidelity


@asynccontextmanager
async def open_channel_client(
    address: str, tls: ClientTLS | None = None
) -> AsyncGenerator[ChannelClient, None]:
    """A client of qnet-channeld at ``address``; ``tls``: mutual TLS (a node's credential)."""
    channel = client_channel(address, tls)
    try:
        yield ChannelClient(address, channel)
    finally:
        await close_channel(channel)


class NodeSession:
    """The Channel API as one registered node sees it: its own qubits, its own links."""

    def __init__(
        self, client: ChannelClient, node: str, token: str, *, registered_ns: int = 0
    ) -> None:
        self.client = client
        self.node = node
        self.token = token
        #: The backend's physical time when it registered this node.
        self.registered_ns = registered_ns
        self._stub = client._stub
        self._map = client._map
        self._pipe = ExecutePipe(client._stub, client._map)

    async def declare_link(self, peer: str, params: LinkParams) -> LinkTheory:
        resp = await unary_call(
            self._stub.DeclareLink,
            pb.DeclareLinkRequest(
                protocol_version=V,
                session=self.token,
                peer=peer,
                params=wire.link_params_to_wire(params),
            ),
            error_mapper=self._map,
        )
        return LinkTheory(resp.theory, resp.last_sequence)

    async def allocate(self, count: int = 1) -> list[int]:
        resp = await unary_call(
            self._stub.Allocate,
            pb.AllocateRequest(protocol_version=V, session=self.token, count=count),
            error_mapper=self._map,
        )
        return list(resp.qubits)

    async def free(self, qubits: Sequence[int]) -> None:
        await unary_call(
            self._stub.Free,
            pb.FreeRequest(protocol_version=V, session=self.token, qubits=qubits),
            error_mapper=self._map,
        )

    async def gate(self, gate: GateName, *qubits: int, angle: float = 0.0) -> None:
        await unary_call(
            self._stub.ApplyGate,
            pb.GateRequest(
                protocol_version=V,
                session=self.token,
                gate=wire.GATE_TO_WIRE[gate],
                qubits=qubits,
                angle=angle,
            ),
            error_mapper=self._map,
        )

    async def measure(self, qubit: int, basis: Basis = Basis.Z, *, keep: bool = False) -> int:
        resp = await unary_call(
            self._stub.Measure,
            pb.MeasureRequest(
                protocol_version=V,
                session=self.token,
                qubit=qubit,
                basis=wire.BASIS_TO_WIRE[basis],
                keep=keep,
            ),
            error_mapper=self._map,
        )
        return resp.outcome

    async def bell_measure(self, qubit_a: int, qubit_b: int) -> int:
        resp = await unary_call(
            self._stub.BellMeasure,
            pb.BellMeasureRequest(
                protocol_version=V, session=self.token, qubit_a=qubit_a, qubit_b=qubit_b
            ),
            error_mapper=self._map,
        )
        return resp.bell_index

    async def start_generation(
        self, peer: str, qubits: Sequence[int], *, bright_state: float | None = None
    ) -> int:
        resp = await unary_call(
            self._stub.StartGeneration,
            pb.StartGenerationRequest(
                protocol_version=V,
                session=self.token,
                peer=peer,
                qubits=qubits,
                bright_state=bright_state or 0.0,
            ),
            error_mapper=self._map,
        )
        return resp.armed

    async def stop_generation(self, peer: str) -> list[int]:
        resp = await unary_call(
            self._stub.StopGeneration,
            pb.StopGenerationRequest(protocol_version=V, session=self.token, peer=peer),
            error_mapper=self._map,
        )
        return list(resp.disarmed)

    async def execute(self, ops: Sequence[pb.Operation]) -> pb.ExecuteResponse:
        """Run ``ops`` in order in one request; see ``ExecuteResponse`` for partial failure."""
        return await self._pipe.execute(
            pb.ExecuteRequest(protocol_version=V, session=self.token, ops=ops)
        )

    @asynccontextmanager
    async def heralds(self) -> AsyncGenerator[AsyncIterator[HeraldEvent], None]:
        """This node's heralds, in order; the iteration ends when the session ends. Entering
        returns once the backend has confirmed the subscription."""
        request = pb.EventsRequest(protocol_version=V, session=self.token)
        async with server_stream(self._stub.Events, request, error_mapper=self._map) as events:
            yield await wire.heralds_after_subscription(self.node, events)
