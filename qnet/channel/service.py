"""qnet-channeld's gRPC face: the Channel (and optional oracle) services over the bridge, and
the daemon's main coroutine, which tests can also run in-process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import trio

from qnet.channel.server import ChannelServer
from qnet.physical.channel_core import ChannelCore
from qnet.runtime.clock import PhysicalClock
from qnet.runtime.grpc_bridge import TrioGrpcBridge, serve
from qnet.runtime.grpc_service import Guard, RpcHandler, service_handler
from qnet.security.identity import CHANNEL
from qnet.security.tls import identify, load_credentials
from qnet.v1 import channel_pb2 as pb

log = logging.getLogger("qnet.channeld")


def channel_handler(
    bridge: TrioGrpcBridge, impl: ChannelServer, guard: Guard | None = None
) -> RpcHandler:
    return service_handler(
        pb.DESCRIPTOR.services_by_name["Channel"],
        bridge,
        {
            "Register": impl.register,
            "DeclareLink": impl.declare_link,
            "Allocate": impl.allocate,
            "Free": impl.free,
            "ApplyGate": impl.apply_gate,
            "Measure": impl.measure,
            "BellMeasure": impl.bell_measure,
            "StartGeneration": impl.start_generation,
            "StopGeneration": impl.stop_generation,
            "Execute": impl.execute,
            "ExecuteStream": impl.execute_stream,
            "Events": impl.events,
            "Now": impl.now,
            "Health": impl.health,
        },
        guard=guard,
    )


def oracle_handler(
    bridge: TrioGrpcBridge, impl: ChannelServer, guard: Guard | None = None
) -> RpcHandler:
    return service_handler(
        pb.DESCRIPTOR.services_by_name["ChannelOracle"],
        bridge,
        {"PairFidelity": impl.pair_fidelity},
        guard=guard,
    )


@dataclass(frozen=True, slots=True)
class ChannelDaemonConfig:
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    time_scale: float = 1.0
    max_group_qubits: int = 10
    test_oracle: bool = False
    #: The network's credentials (``qnet certs``): serve mutual TLS, nodes only as themselves.
    certs: Path | None = None


async def run_channel_daemon(
    config: ChannelDaemonConfig,
    *,
    task_status: trio.TaskStatus[tuple[int, ChannelServer]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the Channel API until cancelled; ``task_status.started`` gets (port, server)."""
    creds = None if config.certs is None else load_credentials(config.certs, CHANNEL)
    core = ChannelCore(seed=config.seed, max_group_qubits=config.max_group_qubits)
    impl = ChannelServer(core, PhysicalClock(config.time_scale), authenticate=creds is not None)
    bridge = TrioGrpcBridge()
    guard = None if creds is None else identify

    def register(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((channel_handler(bridge, impl, guard),))
        if config.test_oracle:
            server.add_generic_rpc_handlers((oracle_handler(bridge, impl, guard),))

    async with trio.open_nursery() as nursery:
        await nursery.start(impl.run)
        port = await nursery.start(
            partial(
                serve,
                register,
                config.host,
                config.port,
                credentials=None if creds is None else creds.server_credentials(),
            )
        )
        log.info("qnet-channeld serving on %s:%d", config.host, port)
        task_status.started((port, impl))
