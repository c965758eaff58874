"""Link-state routing in ``qnet.sim``: the node driver, the memory transport and the routing
core together. Tables after convergence equal Dijkstra over the topology (``routing_spf``);
a stopped node's routes leave every table within the convergence bound, whether its
neighbours are told or only notice the silence, and come back when it starts again."""

from __future__ import annotations

import pytest
import trio

from qnet.errors import FailedPrecondition, NotConverged, NotFound, Unauthenticated, Unreachable
from qnet.network.routing_events import RouteEntry, RoutingHello
from qnet.network.routing_spf import Graph, link_metrics, shortest_paths
from qnet.node.peer_wire import Layer
from qnet.node.routing_setup import topology_routes
from qnet.physical.heralding import fibre_delay_ns
from qnet.sim import SimNetwork, open_network
from qnet.topology import Topology
from tests.network.linkhelpers import example

#: Wall-clock guard of each test (virtual time is bounded by the routing bound itself).
BOUND_S = 30


def reference(
    topology: Topology, down: frozenset[str] = frozenset()
) -> dict[str, dict[str, RouteEntry]]:
    """Every running node's table, by Dijkstra (``routing_spf.shortest_paths``) over the
    topology's usable links between running nodes."""
    threshold = topology.routing.fidelity_threshold
    graph: Graph = {n: {} for n in topology.node_names if n not in down}
    for link in topology.links:
        if link.a in down or link.b in down:
            continue
        a, b = (link.a, topology.node(link.a).params), (link.b, topology.node(link.b).params)
        metrics = link_metrics(link.params, a, b, threshold)
        if metrics.rate_hz > 0 and metrics.fidelity >= threshold:
            graph[link.a][link.b] = graph[link.b][link.a] = metrics
    memory = {n.name: n.params.memory_qubits for n in topology.nodes}
    return {n: shortest_paths(n, graph, memory) for n in graph}


async def settle(net: SimNetwork, expected: dict[str, dict[str, RouteEntry]]) -> int:
    """Wait (no longer than the convergence bound) until every running node's table is the
    expected one; returns how long it took, in simulated ns."""
    start = net.now()
    with trio.fail_after(net.routing_bound_ns() / 1e9):
        for name, runtime in net.nodes.items():
            while runtime.routes() != expected[name]:
                await runtime.routing.wait_changed(runtime.routing.version)
    return net.now() - start


@pytest.mark.parametrize("name", ["chain4", "ring10", "diamond"])
async def test_tables_after_convergence_are_the_shortest_paths(
    autojump_clock: trio.abc.Clock, name: str
) -> None:
    topology = example(name)
    with trio.fail_after(BOUND_S):
        async with open_network(topology) as net:
            # open_network yields once every node converged, within the bound.
            assert 0 < net.now() <= net.routing_bound_ns()
            expected = reference(topology)
            for node, runtime in net.nodes.items():
                assert runtime.routing_converged.is_set()
                assert runtime.routes() == expected[node]
                assert runtime.routes() == topology_routes(
                    topology, node, topology.routing.fidelity_threshold
                )
                assert runtime.routing.complete()
                for dest, entry in expected[node].items():
                    assert runtime.route(dest) == entry
            assert net.classical.by_layer[Layer.NETWORK] > 0
            assert all(
                r.protocol_errors == r.routing.protocol_errors == 0 for r in net.nodes.values()
            )


async def test_diamond_prefers_the_shorter_links(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(BOUND_S):
        async with open_network(example("diamond")) as net:
            route = net.node("alice").route("bob")
            assert route.path == ("alice", "r1", "bob")
            assert route.next_hop == "r1"
            with pytest.raises(Unreachable, match="'nowhere'") as info:
                net.node("alice").route("nowhere")
            assert not isinstance(info.value, NotConverged)


@pytest.mark.parametrize(
    ("name", "victim", "silent"),
    [
        ("chain4", "r1", False),
        ("ring10", "n3", False),
        ("diamond", "r1", False),
        ("diamond", "r1", True),  # only the dead interval tells its neighbours
        ("ring10", "n0", True),
    ],
)
async def test_a_stopped_node_leaves_every_table_and_comes_back(
    autojump_clock: trio.abc.Clock, name: str, victim: str, silent: bool
) -> None:
    topology = example(name)
    with trio.fail_after(BOUND_S):
        async with open_network(topology) as net:
            config = net.routing_config
            await net.stop_node(victim, silent=silent)
            assert victim not in net.nodes
            took = await settle(net, reference(topology, frozenset({victim})))
            # Told at once, the neighbours converge in flooding time; silent, after the dead
            # interval.
            assert (
                took < config.dead_interval_ns if not silent else took >= config.hello_interval_ns
            )
            for runtime in net.nodes.values():
                assert all(victim not in r.path for r in runtime.routes().values())
                with pytest.raises(Unreachable):
                    runtime.route(victim)

            restarted = await net.start_node(victim)
            with pytest.raises(NotConverged):  # a fresh node answers only once converged
                restarted.route(topology.neighbours(victim)[0])
            await settle(net, reference(topology))
            await restarted.routing_converged.wait()
            assert net.node(victim) is restarted
            assert restarted.routing.complete()


async def test_stopping_ends_the_backend_session(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(BOUND_S):
        async with open_network(example("chain4")) as net:
            session = net.sessions["r1"]
            qubits = await session.allocate(3)
            assert net.core.memory_in_use("r1") == 3
            await net.stop_node("r1")
            assert "r1" not in net.core.nodes()
            assert "r1" not in net.sessions
            assert net.core.qubits_in_use == 0  # no requests: nobody else holds any
            with pytest.raises(Unauthenticated, match="session"):
                await session.free(qubits)
            await net.start_node("r1")
            assert "r1" in net.core.nodes()
            assert net.core.memory_in_use("r1") == 0


async def test_messages_to_a_stopped_node_are_dropped(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(BOUND_S):
        async with open_network(example("two_nodes")) as net:
            await net.stop_node("bob")
            alice = net.classical.transport("alice")
            assert not alice.connected("bob")
            before = net.classical.messages
            alice.send("bob", [RoutingHello("alice", 1, (), 1, 2, 0.5)])
            # Simulated time: ten times what the light needs to reach bob.
            delay_ns = fibre_delay_ns(net.topology.link("alice", "bob").params.length_km)
            await trio.sleep(10 * delay_ns / 1e9)
            assert net.classical.messages == before


async def test_stop_and_start_refuse_what_makes_no_sense(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(BOUND_S):
        async with open_network(example("two_nodes")) as net:
            with pytest.raises(FailedPrecondition, match="already running"):
                await net.start_node("alice")
            with pytest.raises(NotFound, match="nowhere"):
                await net.stop_node("nowhere")
            await net.stop_node("bob")
            with pytest.raises(FailedPrecondition, match="not running"):
                await net.stop_node("bob")
            with pytest.raises(NotFound):
                await net.start_node("nowhere")
