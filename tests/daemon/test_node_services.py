"""NodeAdmin and LinkLayer of real node daemons run in-process (qnet-channeld too), over gRPC
on loopback: bad input is a typed error naming the problem, and the daemon keeps serving."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from qnet.channel.client import rpc_error_to_qnet
from qnet.channel.service import ChannelDaemonConfig, run_channel_daemon
from qnet.daemon.config import NodeDaemonConfig
from qnet.daemon.control import DaemonClient, open_daemon_client
from qnet.daemon.node import run_node_daemon
from qnet.errors import InvalidArgument, NotFound, VersionMismatch
from qnet.runtime.grpc_bridge import close_channel, insecure_channel, unary_call
from qnet.v1 import channel_pb2
from qnet.v1 import node_pb2 as pb

TWO_NODES = Path(__file__).resolve().parents[2] / "examples" / "two_nodes.toml"
LIMIT_S = 30


@asynccontextmanager
async def two_daemons() -> AsyncGenerator[tuple[DaemonClient, DaemonClient], None]:
    """alice and bob of two_nodes, not yet told each other's address."""
    async with trio.open_nursery() as nursery:
        port, _ = await nursery.start(run_channel_daemon, ChannelDaemonConfig(seed=5))
        channel = f"127.0.0.1:{port}"
        addresses = []
        for node in ("alice", "bob"):
            config = NodeDaemonConfig(node=node, topology=TWO_NODES, channel=channel, port=0)
            addresses.append(await nursery.start(partial(run_node_daemon, config)))
        async with (
            open_daemon_client(addresses[0]) as alice,
            open_daemon_client(addresses[1]) as bob,
        ):
            yield alice, bob
        nursery.cancel_scope.cancel()


async def _link(alice: DaemonClient, bob: DaemonClient) -> None:
    await alice.set_peers({"bob": bob.address})
    await bob.set_peers({"alice": alice.address})
    assert (await alice.wait_linked(10)).linked
    assert (await bob.wait_linked(10)).linked


async def test_status_before_and_after_linking() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            st = await alice.status()
            assert (st.node, st.network, st.memory_qubits_total) == ("alice", "two_nodes", 8)
            assert st.pid > 0
            assert st.resident_memory_bytes > 0
            assert st.time_scale == 1.0
            [nb] = st.neighbours
            assert (nb.peer, nb.address, nb.connected) == ("bob", "", False)
            now = await alice.wait_linked(0)
            assert not now.linked
            await _link(alice, bob)
            [nb] = (await alice.status()).neighbours
            assert (nb.address, nb.connected) == (bob.address, True)
            counters = await alice.counters()
            assert [p.peer for p in counters.peers] == ["bob"]
            assert counters.peers[0].connects == 1
            [link] = (await alice.links()).links
            assert (link.peer, link.link_id, link.connected) == ("bob", "alice|bob", True)
            assert link.pairs_delivered == 0
            assert math.isnan(link.mean_fidelity)


async def test_admin_refuses_bad_input() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            with pytest.raises(NotFound, match="'carol' is not a neighbour in topology"):
                await alice.set_peers({"bob": bob.address, "carol": "127.0.0.1:1"})
            with pytest.raises(InvalidArgument, match="address of bob must be HOST:PORT"):
                await alice.set_peers({"bob": "nowhere"})
            with pytest.raises(InvalidArgument, match=r"port in 1\.\.65535"):
                await alice.set_peers({"bob": "127.0.0.1:70000"})
            # Nothing was applied.
            assert (await alice.status()).neighbours[0].address == ""
            for timeout in (-1.0, math.nan, math.inf, 601.0):
                with pytest.raises(InvalidArgument, match="timeout_s must be in"):
                    await alice.wait_linked(timeout)
            with pytest.raises(NotFound, match="not neighbours: carol"):
                await alice.wait_linked(1, ["carol"])
            assert (await alice.health()).serving


async def test_wrong_version_and_malformed_bytes() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, _):
            channel = insecure_channel(alice.address)
            try:
                mapper = partial(rpc_error_to_qnet, where="alice")
                status = channel.unary_unary(
                    "/qnet.v1.NodeAdmin/Status",
                    request_serializer=pb.StatusRequest.SerializeToString,
                    response_deserializer=pb.StatusResponse.FromString,
                )
                with pytest.raises(VersionMismatch, match="speaks Node API version 7"):
                    await unary_call(
                        status, pb.StatusRequest(protocol_version=7), error_mapper=mapper
                    )
                raw = channel.unary_unary(
                    "/qnet.v1.NodeAdmin/Status",
                    request_serializer=lambda b: b,
                    response_deserializer=pb.StatusResponse.FromString,
                )
                with pytest.raises(InvalidArgument, match=r"malformed qnet\.v1\.StatusRequest"):
                    await unary_call(raw, b"\xff\xff\xff", error_mapper=mapper)
            finally:
                await close_channel(channel)
            assert (await alice.health()).serving


async def test_keep_pairs_are_held_until_measured_or_freed() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            await _link(alice, bob)
            request = pb.LinkCreateRequest(remote="bob", number=3, kind=pb.PAIR_KIND_KEEP)
            async with bob.link_events("alice") as far, alice.link_create(request) as near:
                events = [e async for e in near]
                theirs = [await anext(aiter(far)) for _ in range(3)]
            assert events[0].WhichOneof("event") == "accepted"
            mine = [e.ok for e in events[1:]]
            assert [ok.index_in_request for ok in mine] == [0, 1, 2]
            assert [e.ok.sequence for e in theirs] == [ok.sequence for ok in mine]
            assert (await alice.status()).qubits_held_for_clients == 3
            qubits = [ok.qubit for ok in mine]
            with pytest.raises(InvalidArgument, match="name a qubit twice"):
                await alice.free_qubits([qubits[0], qubits[0]])
            with pytest.raises(NotFound, match="qubit 424242 is not held"):
                await alice.free_qubits([qubits[0], 424242])
            assert (await alice.status()).qubits_held_for_clients == 3  # nothing freed
            await alice.free_qubits(qubits)
            assert (await alice.status()).qubits_held_for_clients == 0
            # A basis must be named; a refused measurement leaves the qubit held.
            far_qubit = theirs[0].ok.qubit
            with pytest.raises(InvalidArgument, match="basis 0 does not exist"):
                await unary_call(
                    bob._link.MeasureQubit,
                    pb.MeasureQubitRequest(protocol_version=1, qubit=far_qubit),
                    error_mapper=bob._map,
                )
            assert await bob.measure_qubit(far_qubit) in (0, 1)
            await bob.free_qubits([e.ok.qubit for e in theirs[1:]])
            assert (await bob.status()).qubits_held_for_clients == 0
            [link] = (await alice.links()).links
            assert link.pairs_delivered == 3
            assert 0.5 < link.mean_fidelity <= 1


async def test_link_requests_refused_with_the_reason() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, _):
            with pytest.raises(NotFound, match=r"'carol' is not a neighbour \(neighbours: bob\)"):
                async with alice.link_events("carol"):
                    pass
            unreachable = pb.LinkCreateRequest(
                remote="bob", number=1, kind=pb.PAIR_KIND_MEASURE, min_fidelity=1.5
            )
            with pytest.raises(InvalidArgument, match=r"min_fidelity must be in \[0, 1\]"):
                async with alice.link_create(unreachable) as events:
                    await anext(aiter(events))
            # An unreachable fidelity is the link layer's ERR UNSUPPORTED, at once.
            too_good = pb.LinkCreateRequest(
                remote="bob", number=1, kind=pb.PAIR_KIND_MEASURE, min_fidelity=0.999
            )
            async with alice.link_create(too_good) as events:
                got = [e async for e in events]
            assert [e.WhichOneof("event") for e in got] == ["accepted", "err"]
            assert got[1].err.code == pb.LINK_ERROR_CODE_UNSUPPORTED
            assert "out of reach" in got[1].err.reason
            assert not got[1].err.HasField("seq_range")
            assert (await alice.health()).serving


def test_channel_proto_basis_is_shared() -> None:
    # MeasureQubit and LinkOk use the Channel API's Basis enum (one definition on the wire).
    assert pb.LinkOk.DESCRIPTOR.fields_by_name["basis"].enum_type is channel_pb2.Basis.DESCRIPTOR


async def test_routes_follow_the_neighbour() -> None:
    with trio.fail_after(LIMIT_S):
        async with two_daemons() as (alice, bob):
            alone = await alice.routes()
            assert (alone.node, alone.complete, list(alone.routes)) == ("alice", False, [])
            assert [(n.peer, n.state) for n in alone.neighbours] == [
                ("bob", pb.ROUTING_NEIGHBOUR_STATE_DOWN)
            ]
            assert alone.fidelity_threshold == 0.8
            # Not linked: the table cannot become the topology's.
            assert not (await alice.wait_routes(0)).complete
            await _link(alice, bob)
            routed = await alice.wait_routes(10)
            assert routed.converged
            assert routed.complete
            assert routed.version > alone.version
            [route] = routed.routes
            assert (route.destination, route.next_hop, list(route.path)) == (
                "bob",
                "bob",
                ["alice", "bob"],
            )
            assert route.cost_s > 0
            assert 0.8 <= route.fidelity <= 1
            assert [n.state for n in routed.neighbours] == [pb.ROUTING_NEIGHBOUR_STATE_UP]
            assert (await alice.status()).routing_converged
            # A follow-up call answers at once with what changed since an old version.
            assert (await alice.routes(after_version=alone.version, timeout_s=10)).complete
            for timeout in (-1.0, math.nan, 601.0):
                with pytest.raises(InvalidArgument, match="timeout_s must be in"):
                    await alice.routes(after_version=1, timeout_s=timeout)
                with pytest.raises(InvalidArgument, match="timeout_s must be in"):
                    await alice.wait_routes(timeout)
