"""A live network for robustness tests: chain3 of tests/daemon (qnet-channeld and three node
daemons, in-process, on loopback) run by trio in a thread of its own, so that synchronous
hypothesis tests can throw requests at it through plain grpcio while it serves.

Only the readiness and the stop cross the thread boundary; each waits with a bound.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import trio

from qnet.channel.service import ChannelDaemonConfig, run_channel_daemon
from qnet.channel.wire import PROTOCOL_VERSION
from qnet.runtime.grpc_bridge import insecure_channel
from qnet.v1 import channel_pb2, channel_pb2_grpc, peer_pb2_grpc
from qnet.v1 import node_pb2 as pb
from qnet.v1 import node_pb2_grpc as pb_grpc
from tests.daemon.test_network_service import NODES, chain3

#: Bound on starting or stopping the network, wall seconds.
START_S = 60.0
#: Bound on one probe (health, status) of a server, wall seconds.
PROBE_S = 5.0


@dataclass
class LiveNetwork:
    """Addresses of the running chain3 daemons, and plain grpc channels to them."""

    channel: str
    nodes: dict[str, str]
    #: A second qnet-channeld, with the test oracle served, and no node registered.
    oracle: str
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def grpc(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = insecure_channel(address)
        return self._channels[address]

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    # -- probes ---------------------------------------------------------------------------

    def channel_health(self, address: str | None = None) -> channel_pb2.HealthResponse:
        stub = channel_pb2_grpc.ChannelStub(self.grpc(address or self.channel))
        req = channel_pb2.HealthRequest(protocol_version=PROTOCOL_VERSION)
        resp: channel_pb2.HealthResponse = stub.Health(req, timeout=PROBE_S)
        return resp

    def node_status(self, node: str) -> pb.StatusResponse:
        stub = pb_grpc.NodeAdminStub(self.grpc(self.nodes[node]))
        resp: pb.StatusResponse = stub.Status(pb.StatusRequest(protocol_version=1), timeout=PROBE_S)
        return resp

    def node_serving(self, node: str) -> bool:
        for stub in (
            pb_grpc.NodeAdminStub(self.grpc(self.nodes[node])),
            peer_pb2_grpc.PeerStub(self.grpc(self.nodes[node])),
        ):
            resp = stub.Health(pb.NodeHealthRequest(protocol_version=1), timeout=PROBE_S)
            if not resp.serving or resp.node != node:
                return False
        return True

    def set_peers(self, node: str, addresses: dict[str, str]) -> None:
        stub = pb_grpc.NodeAdminStub(self.grpc(self.nodes[node]))
        stub.SetPeers(pb.SetPeersRequest(protocol_version=1, addresses=addresses), timeout=PROBE_S)

    def relink(self) -> None:
        """Every node's neighbour addresses as they were (a fuzzed SetPeers may have moved
        them), then wait until routing is complete everywhere again."""
        n = self.nodes
        self.set_peers("alice", {"r1": n["r1"]})
        self.set_peers("r1", {"alice": n["alice"], "bob": n["bob"]})
        self.set_peers("bob", {"r1": n["r1"]})
        for node in NODES:
            stub = pb_grpc.NodeAdminStub(self.grpc(n[node]))
            routes = stub.WaitRoutes(
                pb.WaitRoutesRequest(protocol_version=1, timeout_s=30), timeout=40
            )
            assert routes.complete, (node, routes)


@contextmanager
def live_chain3(tmp_path: Path) -> Iterator[LiveNetwork]:
    """Run chain3 in a thread for the duration of the block; stop it whatever happens."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        stop = trio.Event()
        box["stop"] = stop
        async with chain3(tmp_path) as clients, trio.open_nursery() as nursery:
            port, _ = await nursery.start(
                run_channel_daemon, ChannelDaemonConfig(seed=3, test_oracle=True)
            )
            status = await clients["alice"].status()
            box["network"] = LiveNetwork(
                status.channel,
                {name: c.address for name, c in clients.items()},
                f"127.0.0.1:{port}",
            )
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test thread below
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="qnet-live-chain3", daemon=True)
    thread.start()
    try:
        assert ready.wait(START_S), "chain3 did not start in time"
        if "error" in box:
            raise AssertionError("chain3 failed to start") from box["error"]  # type: ignore[misc]
        network = box["network"]
        assert isinstance(network, LiveNetwork)
        try:
            yield network
        finally:
            network.close()
    finally:
        if thread.is_alive() and "token" in box:
            stop = box["stop"]
            assert isinstance(stop, trio.Event)
            token = box["token"]
            assert isinstance(token, trio.lowlevel.TrioToken)
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(START_S)
        assert not thread.is_alive(), "chain3 did not stop in time"
        if "error" in box and "network" in box:
            raise AssertionError("chain3 failed while serving") from box["error"]  # type: ignore[misc]
