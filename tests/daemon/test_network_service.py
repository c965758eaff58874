"""The NetworkLayer service of real node daemons run in-process (qnet-channeld too) over gRPC
on loopback, on a three-node chain alice – r1 – bob: circuits opened at the head and taken at
the tail, pairs measured on delivery or held for clients like link-layer KEEP qubits, typed
refusals, and circuits closed when their clients go away."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from qnet.channel.service import ChannelDaemonConfig, run_channel_daemon
from qnet.daemon.config import NodeDaemonConfig
from qnet.daemon.control import DaemonClient, open_daemon_client
from qnet.daemon.node import run_node_daemon
from qnet.errors import (
    InvalidArgument,
    NotConverged,
    NotFound,
    QnetError,
    Unsupported,
    VersionMismatch,
)
from qnet.physical.gates import Basis
from qnet.runtime.grpc_bridge import server_stream
from qnet.v1 import channel_pb2
from qnet.v1 import node_pb2 as pb

LIMIT_S = 60
NODES = ("alice", "r1", "bob")
CHAIN3 = """
[network]
name = "chain3"
seed = 7

[defaults.node]
memory_qubits = 8
t1_s = 10.0
t2_s = 1.0
gate_error_1q = 1e-4
gate_error_2q = 1e-3
measure_error = 0.01

[defaults.link]
scheme = "single_click"
length_km = 5
detector_efficiency = 0.9
source_fidelity = 0.99

[[node]]
name = "alice"

[[node]]
name = "r1"

[[node]]
name = "bob"

[[link]]
between = ["alice", "r1"]

[[link]]
between = ["r1", "bob"]
"""

Clients = dict[str, DaemonClient]


@asynccontextmanager
async def chain3(tmp_path: Path, *, link: bool = True) -> AsyncGenerator[Clients, None]:
    """The three daemons, linked and routed unless ``link`` is false. Physical time runs at a
    tenth of wall time: every daemon shares this one thread, so messages take milliseconds of
    wall time, which the link layer's plans must not mistake for fibre-scale delays."""
    topology = tmp_path / "chain3.toml"
    topology.write_text(CHAIN3)
    async with trio.open_nursery() as nursery:
        config = ChannelDaemonConfig(seed=5, time_scale=0.1)
        port, _ = await nursery.start(run_channel_daemon, config)
        addresses = {}
        for node in NODES:
            daemon = NodeDaemonConfig(
                node=node, topology=topology, channel=f"127.0.0.1:{port}", port=0
            )
            addresses[node] = await nursery.start(partial(run_node_daemon, daemon))
        async with AsyncExitStack() as stack:
            clients = {
                node: await stack.enter_async_context(open_daemon_client(address))
                for node, address in addresses.items()
            }
            if link:
                await clients["alice"].set_peers({"r1": addresses["r1"]})
                await clients["r1"].set_peers(
                    {"alice": addresses["alice"], "bob": addresses["bob"]}
                )
                await clients["bob"].set_peers({"r1": addresses["r1"]})
                for client in clients.values():
                    assert (await client.wait_routes(20)).complete
            yield clients
        nursery.cancel_scope.cancel()


def _kinds(events: list[pb.CircuitEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


async def _until_closed(events: AsyncIterator[pb.CircuitEvent]) -> list[pb.CircuitEvent]:
    """Events up to and including the first ``closed``."""
    out = []
    async for event in events:
        out.append(event)
        if event.WhichOneof("event") == "closed":
            break
    return out


async def _nothing_held(clients: Clients) -> None:
    for client in clients.values():
        assert (await client.status()).qubits_held_for_clients == 0


async def test_pairs_reach_both_ends_with_the_same_indices(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with chain3(tmp_path) as nodes:
            alice, bob = nodes["alice"], nodes["bob"]
            async with bob.circuit_events(measure_on_delivery=Basis.Z) as tail:
                async with alice.open_circuit(
                    "bob", min_fidelity=0.7, number=12, measure_on_delivery=Basis.Z
                ) as (opened, events):
                    head = [e async for e in events]
                far = await _until_closed(tail)
            assert (opened.circuit_id.head, list(opened.path)) == ("alice", list(NODES))
            assert len(opened.link_fidelity) == 2
            assert all(0.7 < f <= 1 for f in opened.link_fidelity)
            assert opened.cutoff_ns > 0
            assert (opened.min_fidelity, opened.number) == (0.7, 12)
            assert _kinds(head) == ["pair"] * 12 + ["closed"]
            assert _kinds(far) == ["incoming"] + ["pair"] * 12 + ["closed"]
            incoming = far[0].incoming
            assert incoming.circuit_id == opened.circuit_id
            assert list(incoming.path) == list(NODES)
            assert list(incoming.link_fidelity) == list(opened.link_fidelity)
            assert (incoming.min_fidelity, incoming.number) == (0.7, 12)
            mine, theirs = [e.pair for e in head[:-1]], [e.pair for e in far[1:-1]]
            assert [p.index for p in mine] == [p.index for p in theirs] == list(range(12))
            for p in (*mine, *theirs):
                assert p.circuit_id == opened.circuit_id
                assert p.measured
                assert p.basis == channel_pb2.BASIS_Z
                assert p.outcome in (0, 1)
                assert 0.7 <= p.fidelity_estimate <= 1
                assert len(p.weights) == 4
                assert p.weights[0] == pytest.approx(p.fidelity_estimate)
            assert {p.remote for p in mine} == {"bob"}
            assert {p.remote for p in theirs} == {"alice"}
            for closed in (head[-1].closed, far[-1].closed):
                assert closed.code == pb.CIRCUIT_CLOSE_CODE_COMPLETED
                assert (closed.node, closed.delivered) == ("bob", 12)
            await _nothing_held(nodes)


async def test_held_pairs_are_measured_and_freed_like_keep_qubits(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with chain3(tmp_path) as nodes:
            alice, bob = nodes["alice"], nodes["bob"]
            async with bob.circuit_events() as tail:
                async with alice.open_circuit("bob", min_fidelity=0.7, number=3) as (_, events):
                    mine = [e.pair for e in [e async for e in events][:-1]]
                theirs = [e.pair for e in (await _until_closed(tail))[1:-1]]
            assert not any(p.measured for p in (*mine, *theirs))
            assert (await alice.status()).qubits_held_for_clients == 3
            assert (await bob.status()).qubits_held_for_clients == 3
            bases = [Basis.Z, Basis.X, Basis.Y]
            near = await alice.measure_qubits([p.qubit for p in mine], bases)
            assert set(near) <= {0, 1}
            await bob.free_qubits([p.qubit for p in theirs])
            await _nothing_held(nodes)
            with pytest.raises(NotFound, match="not held"):
                await bob.measure_qubit(theirs[0].qubit)


async def test_bad_requests_are_typed_errors_and_the_daemon_serves_on(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with chain3(tmp_path) as nodes:
            alice = nodes["alice"]
            cases: list[tuple[pb.OpenCircuitRequest, type[QnetError], str]] = [
                (pb.OpenCircuitRequest(min_fidelity=0.5), InvalidArgument, "destination must"),
                (
                    pb.OpenCircuitRequest(destination="bob", min_fidelity=1.5),
                    InvalidArgument,
                    r"min_fidelity must be in \[0, 1\]",
                ),
                (
                    pb.OpenCircuitRequest(destination="alice", min_fidelity=0.5),
                    InvalidArgument,
                    "from alice to itself",
                ),
                (
                    pb.OpenCircuitRequest(destination="carol", min_fidelity=0.5),
                    NotFound,
                    "no node 'carol'",
                ),
                # The tail finds no plan for the links: the hops' answer, as a typed error.
                (
                    pb.OpenCircuitRequest(destination="bob", min_fidelity=0.999),
                    Unsupported,
                    "circuit",
                ),
            ]
            bad_basis = pb.OpenCircuitRequest(destination="bob", min_fidelity=0.5)
            bad_basis.measure_on_delivery = 9  # type: ignore[assignment]
            cases.append((bad_basis, InvalidArgument, "measure_on_delivery: basis 9"))
            cases.append((pb.OpenCircuitRequest(protocol_version=7), VersionMismatch, "version 7"))
            for request, error, match in cases:
                if not request.protocol_version:
                    request.protocol_version = 1
                with pytest.raises(error, match=match):
                    async with server_stream(
                        alice._net.OpenCircuit, request, error_mapper=alice._map
                    ) as events:
                        await anext(aiter(events))
            events_request = pb.CircuitEventsRequest(protocol_version=1)
            events_request.measure_on_delivery = 7  # type: ignore[assignment]
            with pytest.raises(InvalidArgument, match="measure_on_delivery: basis 7"):
                async with server_stream(
                    alice._net.CircuitEvents, events_request, error_mapper=alice._map
                ) as events:
                    await anext(aiter(events))
            assert (await alice.health()).serving
            # Nothing was reserved by the refused circuits.
            async with (
                nodes["bob"].circuit_events(measure_on_delivery=Basis.Z) as tail,
                alice.open_circuit(
                    "bob", min_fidelity=0.6, number=2, measure_on_delivery=Basis.Z
                ) as (_, events),
            ):
                assert _kinds([e async for e in events]) == ["pair", "pair", "closed"]
                assert _kinds(await _until_closed(tail))[-1] == "closed"


async def test_no_route_before_routing_converged(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with chain3(tmp_path, link=False) as nodes:
            with pytest.raises(NotConverged):
                async with nodes["alice"].open_circuit("bob", min_fidelity=0.5):
                    pass


async def test_a_circuit_nobody_takes_at_the_tail_is_closed(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with chain3(tmp_path) as nodes:
            async with nodes["alice"].open_circuit("bob", min_fidelity=0.6) as (_, events):
                rest = [e async for e in events]
            assert _kinds(rest) == ["closed"]
            closed = rest[0].closed
            assert (closed.code, closed.node) == (pb.CIRCUIT_CLOSE_CODE_CLOSED, "bob")
            await _nothing_held(nodes)


async def test_ending_the_open_call_closes_the_circuit_at_the_tail(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with chain3(tmp_path) as nodes:
            alice, bob = nodes["alice"], nodes["bob"]
            async with bob.circuit_events() as tail:
                async with alice.open_circuit(
                    "bob", min_fidelity=0.6, measure_on_delivery=Basis.X
                ) as (_, events):
                    got = 0
                    async for event in events:
                        got += event.WhichOneof("event") == "pair"
                        if got == 3:
                            break
                far = await _until_closed(tail)
            closed = far[-1].closed
            assert (closed.code, closed.node) == (pb.CIRCUIT_CLOSE_CODE_CLOSED, "alice")
            # bob's client received its halves held; they are its to measure or free.
            held = [e.pair.qubit for e in far if e.WhichOneof("event") == "pair"]
            assert len(held) >= 3
            assert (await bob.status()).qubits_held_for_clients == len(held)
            await bob.free_qubits(held)
            await _nothing_held(nodes)


async def test_ending_the_events_call_closes_its_circuits(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with chain3(tmp_path) as nodes, AsyncExitStack() as stack:
            alice, bob = nodes["alice"], nodes["bob"]
            tail = await stack.enter_async_context(bob.circuit_events(measure_on_delivery=Basis.Z))
            async with alice.open_circuit("bob", min_fidelity=0.6, measure_on_delivery=Basis.Z) as (
                _,
                events,
            ):
                async for event in tail:
                    if event.WhichOneof("event") == "pair":
                        break
                await stack.aclose()  # bob's client goes away
                rest = [e async for e in events]
            assert rest[-1].closed.code == pb.CIRCUIT_CLOSE_CODE_CLOSED
            assert rest[-1].closed.node == "bob"
            await _nothing_held(nodes)
