"""A trio client of one qnetd's NodeAdmin, LinkLayer and NetworkLayer services: what ``qnet up``,
``qnet status``, ``qnet links``, tests and benchmarks use. Remote errors come back as the
``qnet.errors`` types the daemon raised."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import grpc

from qnet.channel.client import rpc_error_to_qnet
from qnet.channel.wire import BASIS_TO_WIRE
from qnet.daemon.wire import V
from qnet.errors import ProtocolError
from qnet.physical.gates import Basis
from qnet.runtime.grpc_bridge import close_channel, server_stream, unary_call
from qnet.security.tls import ClientTLS, client_channel
from qnet.v1 import node_pb2 as pb
from qnet.v1 import node_pb2_grpc as pb_grpc


class DaemonClient:
    """A connection to one qnetd. Use ``open_daemon_client`` to get one."""

    def __init__(self, address: str, channel: grpc.Channel) -> None:
        self.address = address
        self._admin = pb_grpc.NodeAdminStub(channel)
        self._link = pb_grpc.LinkLayerStub(channel)
        self._net = pb_grpc.NetworkLayerStub(channel)

    def _map(self, error: grpc.RpcError) -> BaseException:
        return rpc_error_to_qnet(error, where=f"qnetd at {self.address}")

    # -- NodeAdmin ----------------------------------------------------------------------------

    async def health(self) -> pb.NodeHealthResponse:
        return await unary_call(
            self._admin.Health, pb.NodeHealthRequest(protocol_version=V), error_mapper=self._map
        )

    async def status(self) -> pb.StatusResponse:
        return await unary_call(
            self._admin.Status, pb.StatusRequest(protocol_version=V), error_mapper=self._map
        )

    async def set_peers(self, addresses: Mapping[str, str]) -> None:
        await unary_call(
            self._admin.SetPeers,
            pb.SetPeersRequest(protocol_version=V, addresses=dict(addresses)),
            error_mapper=self._map,
        )

    async def wait_linked(
        self, timeout_s: float, peers: Sequence[str] = ()
    ) -> pb.WaitLinkedResponse:
        return await unary_call(
            self._admin.WaitLinked,
            pb.WaitLinkedRequest(protocol_version=V, timeout_s=timeout_s, peers=peers),
            error_mapper=self._map,
        )

    async def links(self) -> pb.LinksResponse:
        return await unary_call(
            self._admin.Links, pb.LinksRequest(protocol_version=V), error_mapper=self._map
        )

    async def counters(self) -> pb.CountersResponse:
        return await unary_call(
            self._admin.Counters, pb.CountersRequest(protocol_version=V), error_mapper=self._map
        )

    async def routes(self, after_version: int = 0, timeout_s: float = 0.0) -> pb.RoutesResponse:
        """The routing state now, or (``after_version`` set) once it is newer than that."""
        return await unary_call(
            self._admin.Routes,
            pb.RoutesRequest(protocol_version=V, after_version=after_version, timeout_s=timeout_s),
            error_mapper=self._map,
        )

    async def wait_routes(self, timeout_s: float) -> pb.RoutesResponse:
        """Once routing is complete (the topology's table), or after ``timeout_s``."""
        return await unary_call(
            self._admin.WaitRoutes,
            pb.WaitRoutesRequest(protocol_version=V, timeout_s=timeout_s),
            error_mapper=self._map,
        )

    # -- LinkLayer ----------------------------------------------------------------------------

    @asynccontextmanager
    async def link_create(
        self, request: pb.LinkCreateRequest
    ) -> AsyncGenerator[AsyncIterator[pb.LinkEvent], None]:
        """The request's events: ``accepted``, then its OKs, or an ERR. Leaving ends the call."""
        if not request.protocol_version:
            request.protocol_version = V
        async with server_stream(self._link.LinkCreate, request, error_mapper=self._map) as events:
            yield events

    @asynccontextmanager
    async def link_events(
        self, peer: str, *, measure_on_delivery: Basis | None = None
    ) -> AsyncGenerator[AsyncIterator[pb.LinkEvent], None]:
        """Events of the neighbour's requests on the link to ``peer``; entering returns once
        the daemon confirmed the subscription. ``measure_on_delivery``: the daemon measures
        each KEEP qubit in this basis as it delivers it (the OK carries the outcome)."""
        request = pb.LinkEventsRequest(protocol_version=V, peer=peer)
        if measure_on_delivery is not None:
            request.measure_on_delivery = BASIS_TO_WIRE[measure_on_delivery]
        async with server_stream(self._link.LinkEvents, request, error_mapper=self._map) as events:
            first = await anext(aiter(events), None)
            if first is None or first.WhichOneof("event") != "subscribed":
                raise ProtocolError(
                    f"qnetd at {self.address}: LinkEvents({peer}) did not start with `subscribed`"
                )
            yield events

    async def measure_qubit(self, qubit: int, basis: Basis = Basis.Z) -> int:
        resp = await unary_call(
            self._link.MeasureQubit,
            pb.MeasureQubitRequest(protocol_version=V, qubit=qubit, basis=BASIS_TO_WIRE[basis]),
            error_mapper=self._map,
        )
        return resp.outcome

    async def measure_qubits(self, qubits: Sequence[int], bases: Sequence[Basis]) -> list[int]:
        """Measure several held qubits in one call, each in its basis."""
        resp = await unary_call(
            self._link.MeasureQubits,
            pb.MeasureQubitsRequest(
                protocol_version=V, qubits=qubits, bases=[BASIS_TO_WIRE[b] for b in bases]
            ),
            error_mapper=self._map,
        )
        return list(resp.outcomes)

    async def free_qubits(self, qubits: Sequence[int]) -> None:
        await unary_call(
            self._link.FreeQubits,
            pb.FreeQubitsRequest(protocol_version=V, qubits=qubits),
            error_mapper=self._map,
        )

    # -- NetworkLayer -------------------------------------------------------------------------

    @asynccontextmanager
    async def open_circuit(
        self,
        destination: str,
        *,
        min_fidelity: float,
        number: int = 0,
        measure_on_delivery: Basis | None = None,
    ) -> AsyncGenerator[tuple[pb.CircuitOpened, AsyncIterator[pb.CircuitEvent]], None]:
        """Open a circuit to ``destination``: entering returns once every hop accepted (or
        raises the typed refusal), with the ``opened`` event and the rest of the stream (pairs,
        then ``closed``). Leaving closes the circuit."""
        request = pb.OpenCircuitRequest(
            protocol_version=V, destination=destination, min_fidelity=min_fidelity, number=number
        )
        if measure_on_delivery is not None:
            request.measure_on_delivery = BASIS_TO_WIRE[measure_on_delivery]
        async with server_stream(self._net.OpenCircuit, request, error_mapper=self._map) as events:
            first = await anext(aiter(events), None)
            if first is None or first.WhichOneof("event") != "opened":
                raise ProtocolError(
                    f"qnetd at {self.address}: OpenCircuit({destination}) did not start with"
                    " `opened`"
                )
            yield first.opened, events

    @asynccontextmanager
    async def circuit_events(
        self, *, measure_on_delivery: Basis | None = None
    ) -> AsyncGenerator[AsyncIterator[pb.CircuitEvent], None]:
        """Circuits that end at this node from now on; entering returns once the daemon
        confirmed the subscription. Leaving closes the circuits only this stream took."""
        request = pb.CircuitEventsRequest(protocol_version=V)
        if measure_on_delivery is not None:
            request.measure_on_delivery = BASIS_TO_WIRE[measure_on_delivery]
        async with server_stream(
            self._net.CircuitEvents, request, error_mapper=self._map
        ) as events:
            first = await anext(aiter(events), None)
            if first is None or first.WhichOneof("event") != "subscribed":
                raise ProtocolError(
                    f"qnetd at {self.address}: CircuitEvents did not start with `subscribed`"
                )
            yield events


@asynccontextmanager
async def open_daemon_client(
    address: str, tls: ClientTLS | None = None
) -> AsyncGenerator[DaemonClient, None]:
    """A client of the qnetd at ``address``; ``tls``: mutual TLS with the application
    credential (``NetworkState.client_tls``)."""
    channel = client_channel(address, tls)
    try:
        yield DaemonClient(address, channel)
    finally:
        await close_channel(channel)
