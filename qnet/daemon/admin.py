"""The NodeAdmin service of node.proto: health, status, neighbour addresses, counters, routes.

It is served from the moment the daemon's gRPC server listens; until the node is running
(registered with the backend, links declared, peer transport up) Health answers
``serving=false`` and the other calls fail with UNAVAILABLE.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import trio

from qnet.daemon import wire
from qnet.daemon.app_service import AppService
from qnet.daemon.config import split_address
from qnet.daemon.link_service import LinkService
from qnet.daemon.procs import resident_bytes
from qnet.errors import NotFound, Unreachable
from qnet.node.grpc_transport import GrpcPeerTransport, TransportStats
from qnet.node.runtime import NodeRuntime
from qnet.runtime.grpc_bridge import TrioGrpcBridge
from qnet.runtime.grpc_service import Guard, RpcHandler, service_handler
from qnet.topology import Topology
from qnet.v1 import node_pb2 as pb

#: Longest WaitLinked, wall-clock seconds.
MAX_WAIT_S = 600.0


@dataclass(frozen=True, slots=True)
class RunningNode:
    """The parts of a started node daemon that the admin service reports on."""

    topology: Topology
    runtime: NodeRuntime
    transport: GrpcPeerTransport
    links: LinkService
    channel_address: str
    apps: AppService | None = None


class AdminService:
    def __init__(self, node: str) -> None:
        self.node = node
        self.started_wall = time.monotonic()
        self.running: RunningNode | None = None

    def handlers(self, bridge: TrioGrpcBridge, guard: Guard | None = None) -> RpcHandler:
        return service_handler(
            pb.DESCRIPTOR.services_by_name["NodeAdmin"],
            bridge,
            {
                "Health": self.health,
                "Status": self.status,
                "SetPeers": self.set_peers,
                "WaitLinked": self.wait_linked,
                "Links": self.links,
                "Counters": self.counters,
                "Routes": self.routes,
                "WaitRoutes": self.wait_routes,
            },
            guard=guard,
        )

    def _running(self) -> RunningNode:
        if self.running is None:
            raise Unreachable("the daemon is still starting", node=self.node)
        return self.running

    def _neighbours(self, node: RunningNode, stats: TransportStats) -> list[pb.NeighbourStatus]:
        out = []
        for peer in node.topology.neighbours(self.node):
            s = stats.peers.get(peer)
            out.append(
                pb.NeighbourStatus(
                    peer=peer,
                    address=s.address if s else "",
                    connected=bool(s and s.connected),
                    last_error=s.last_error if s else "",
                )
            )
        return out

    # -- handlers -----------------------------------------------------------------------------

    async def health(self, req: pb.NodeHealthRequest) -> pb.NodeHealthResponse:
        wire.check_version(req)
        return pb.NodeHealthResponse(
            protocol_version=wire.V, serving=self.running is not None, node=self.node
        )

    async def status(self, req: pb.StatusRequest) -> pb.StatusResponse:
        wire.check_version(req)
        node = self._running()
        runtime = node.runtime
        held = len(node.links.held)
        # Every qubit an application holds here, its own sessions' and any in-process one's.
        for_apps = len(runtime.app_qubits)
        by_transport = runtime.transport_layer.core.held_count()
        return pb.StatusResponse(
            protocol_version=wire.V,
            node=self.node,
            uptime_s=time.monotonic() - self.started_wall,
            pid=os.getpid(),
            memory_qubits_total=runtime.spec.params.memory_qubits,
            memory_qubits_in_use=runtime.memory_in_use() + held + for_apps + by_transport,
            neighbours=self._neighbours(node, node.transport.stats()),
            qubits_held_for_clients=held,
            resident_memory_bytes=resident_bytes(),
            network=node.topology.name,
            channel=node.channel_address,
            now_ns=max(runtime.now(), 0),
            time_scale=runtime.clock.scale,
            routing_converged=runtime.routing_converged.is_set(),
            qubits_held_for_apps=for_apps,
            qubits_held_by_transport=by_transport,
            app_sessions=node.apps.sessions if node.apps is not None else 0,
        )

    async def set_peers(self, req: pb.SetPeersRequest) -> pb.SetPeersResponse:
        wire.check_version(req)
        node = self._running()
        neighbours = set(node.topology.neighbours(self.node))
        for peer, address in sorted(req.addresses.items()):
            if peer not in neighbours:
                known = ", ".join(sorted(neighbours)) or "none"
                raise NotFound(
                    f"{peer!r} is not a neighbour in topology {node.topology.name}"
                    f" (neighbours: {known})",
                    node=self.node,
                )
            split_address(address, what=f"address of {peer}")
        for peer, address in sorted(req.addresses.items()):
            node.transport.set_peer_address(peer, address)
        return pb.SetPeersResponse(protocol_version=wire.V)

    async def wait_linked(self, req: pb.WaitLinkedRequest) -> pb.WaitLinkedResponse:
        wire.check_version(req)
        node = self._running()
        wire.check_timeout(req.timeout_s, MAX_WAIT_S)
        peers = list(req.peers) or list(node.topology.neighbours(self.node))
        unknown = [p for p in peers if p not in node.transport.peers]
        if unknown:
            raise NotFound(f"not neighbours: {', '.join(unknown)}", node=self.node)
        with trio.move_on_after(req.timeout_s):
            await node.transport.wait_connected(peers)
        stats = node.transport.stats()
        return pb.WaitLinkedResponse(
            protocol_version=wire.V,
            linked=all(stats.peers[p].connected for p in peers),
            neighbours=self._neighbours(node, stats),
        )

    async def links(self, req: pb.LinksRequest) -> pb.LinksResponse:
        wire.check_version(req)
        node = self._running()
        out = []
        for spec in node.topology.links_of(self.node):
            peer = spec.other(self.node)
            c = node.runtime.counters(peer)
            out.append(
                pb.LinkStats(
                    peer=peer,
                    link_id=spec.id,
                    connected=node.transport.connected(peer),
                    heralds=c.heralds,
                    pairs_delivered=c.delivered,
                    errors=c.errors,
                    rate_hz=c.rate_hz,
                    mean_fidelity=c.mean_fidelity,
                )
            )
        return pb.LinksResponse(protocol_version=wire.V, node=self.node, links=out)

    async def counters(self, req: pb.CountersRequest) -> pb.CountersResponse:
        wire.check_version(req)
        node = self._running()
        stats = node.transport.stats()
        return pb.CountersResponse(
            protocol_version=wire.V,
            node=self.node,
            peers=[wire.peer_counters(s) for s in stats.peers.values()],
            refused_streams=stats.refused,
            protocol_errors=node.runtime.protocol_errors + node.runtime.routing.protocol_errors,
        )

    async def routes(self, req: pb.RoutesRequest) -> pb.RoutesResponse:
        wire.check_version(req)
        node = self._running()
        wire.check_timeout(req.timeout_s, MAX_WAIT_S)
        routing = node.runtime.routing
        if req.after_version:
            with trio.move_on_after(req.timeout_s):
                await routing.wait_changed(req.after_version)
        return wire.routes_response(routing, node.topology.neighbours(self.node))

    async def wait_routes(self, req: pb.WaitRoutesRequest) -> pb.RoutesResponse:
        wire.check_version(req)
        node = self._running()
        wire.check_timeout(req.timeout_s, MAX_WAIT_S)
        routing = node.runtime.routing
        with trio.move_on_after(req.timeout_s):
            while not routing.complete():
                await routing.wait_changed(routing.version)
        return wire.routes_response(routing, node.topology.neighbours(self.node))
