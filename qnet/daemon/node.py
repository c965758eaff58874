"""One node daemon, composed: what ``qnetd`` runs, and what tests can run in-process.

Start-up, in order, each step bounded:

1. load the topology and find the node (a bad file or name fails before anything starts);
2. bind the daemon's one gRPC server (Peer, NodeAdmin, LinkLayer, NetworkLayer,
   Application) — a busy port fails here, before the node touches the backend; Health
   answers ``serving=false`` meanwhile;
3. connect to qnet-channeld (waiting up to ``channel_timeout_s`` for it to accept
   connections, so daemons may start alongside it), register the node with ``takeover`` (a
   restarted daemon replaces its old registration) and align the physical clock with the
   backend's (its time and time scale, half the round trip added);
4. start the node driver (links declared, herald stream open, peer transport dialing), the
   LinkLayer dispatcher, the NetworkLayer's circuit ends and the Application sessions; then
   Health answers ``serving=true`` and ``task_status.started`` gets the daemon's address.

Neighbours' addresses come from the topology when it fixes their ports, and otherwise from
NodeAdmin.SetPeers (``qnet up`` sends them once every daemon is ready).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress
from functools import partial

import grpc
import trio

from qnet.channel.client import ChannelClient
from qnet.daemon.admin import AdminService, RunningNode
from qnet.daemon.app_service import AppService
from qnet.daemon.config import NodeDaemonConfig, rto_ns
from qnet.daemon.link_service import LinkService
from qnet.daemon.network_service import NetworkService
from qnet.errors import Unreachable
from qnet.node.grpc_transport import GrpcPeerTransport
from qnet.node.runtime import NodeRuntime
from qnet.runtime.clock import PhysicalClock
from qnet.runtime.grpc_bridge import TrioGrpcBridge, close_channel, serve
from qnet.security.identity import CHANNEL, Identity
from qnet.security.tls import ClientTLS, app_guard, client_channel, daemon_credentials
from qnet.topology import Topology, load_topology

log = logging.getLogger("qnet.daemon")

#: How long open RPCs get to finish when the daemon stops.
STOP_GRACE_S = 1.0
#: Reconnect back-off towards qnet-channeld: short, so a daemon started alongside the backend
#: connects as soon as it listens (grpc's default starts at 1 s).
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_addresses(topology: Topology, node: str) -> dict[str, str]:
    """Each neighbour's address where the topology fixes its port, else ""."""
    out = {}
    for peer in topology.neighbours(node):
        spec = topology.node(peer)
        out[peer] = _address(spec.host, spec.port) if spec.port else ""
    return out


@asynccontextmanager
async def connect_channel(
    address: str, timeout_s: float, tls: ClientTLS | None = None
) -> AsyncGenerator[ChannelClient, None]:
    """A client of qnet-channeld at ``address`` once it accepts connections (bounded)."""
    channel = client_channel(address, tls, options=_CHANNEL_OPTIONS)
    try:
        ready = grpc.channel_ready_future(channel)
        token = trio.lowlevel.current_trio_token()
        connected = trio.Event()

        def wake(_: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(connected.set)

        ready.add_done_callback(wake)
        try:
            with trio.move_on_after(timeout_s) as wait:
                await connected.wait()
        finally:
            ready.cancel()  # a no-op once connected
        if wait.cancelled_caught:
            raise Unreachable(
                f"qnet-channeld at {address} did not accept a connection within {timeout_s:g} s"
            )
        yield ChannelClient(address, channel)
    finally:
        with trio.CancelScope(shield=True):
            await close_channel(channel)


async def run_node_daemon(
    config: NodeDaemonConfig,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node daemon until cancelled; ``task_status.started`` gets its address."""
    topology = load_topology(config.topology)
    spec = topology.node(config.node)
    name = spec.name
    host = spec.host if config.host is None else config.host
    port = spec.port if config.port is None else config.port
    admin = AdminService(name)
    links = LinkService(name)
    network = NetworkService(name, links)
    apps = AppService(name)
    creds = daemon_credentials(topology, config.certs, Identity.node(name))
    transport = GrpcPeerTransport(name, peer_addresses(topology, name), tls=creds)
    bridge = TrioGrpcBridge()
    guard = None if creds is None else app_guard(creds.app_token)

    def register(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                transport.handlers(bridge),
                admin.handlers(bridge, guard),
                links.handlers(bridge, guard),
                network.handlers(bridge, guard),
                apps.handlers(bridge, guard),
            )
        )

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            partial(
                serve,
                register,
                host,
                port,
                grace=STOP_GRACE_S,
                credentials=None if creds is None else creds.server_credentials(),
            )
        )
        address = _address(host, bound)
        log.info("%s: serving on %s; backend at %s", name, address, config.channel)
        async with (
            connect_channel(
                config.channel,
                config.channel_timeout_s,
                None if creds is None else creds.client(CHANNEL),
            ) as client,
            trio.open_nursery() as node_tasks,
        ):
            session = await client.register(name, spec.params, takeover=True)
            before = trio.current_time()
            health = await client.health()
            half_rtt_ns = (trio.current_time() - before) / 2 * health.time_scale * 1e9
            clock = PhysicalClock(health.time_scale, start_ns=health.now_ns + int(half_rtt_ns))
            runtime = NodeRuntime(
                name,
                topology,
                session,
                transport,
                clock,
                rto_ns=rto_ns(config.rto_wall_s, health.time_scale),
                # Between processes a pair waits for a few ms of messaging and RPCs before it
                # is delivered; plans must aim at its fidelity then (a quarter of the RTO).
                latency_ns=rto_ns(config.rto_wall_s, health.time_scale) // 4,
                seed=topology.seed,
            )
            await node_tasks.start(runtime.run)
            await node_tasks.start(links.run, runtime, session)
            await node_tasks.start(network.run, runtime)
            await node_tasks.start(apps.run, runtime)
            admin.running = RunningNode(
                topology, runtime, transport, links, config.channel, apps=apps
            )
            log.info("%s: running (time scale %g, %d links)", name, clock.scale, len(runtime.peers))
            task_status.started(address)
            try:
                await trio.sleep_forever()
            finally:
                admin.running = None
