"""What a node's routing core is built from: its settings and link metrics, from the topology.

The topology's ``[routing]`` intervals are wall-clock milliseconds of the daemons (virtual time
in ``qnet.sim``): they are about messages between processes and how soon a silent neighbour is
declared dead, so, like the EGP's retransmission timeout, they are scaled into physical time
by the backend's time scale (physical seconds per wall second). So are the advert refresh and
maximum age, which would otherwise be hours of wall time at a small scale, or a refresh storm
at a large one.

``topology_graph`` and ``topology_routes`` give the tables the topology implies when every
node and link is up: what ``qnet up`` waits for, and what tests compare tables against.
"""

from __future__ import annotations

from collections import deque

from qnet.network.routing_config import RoutingConfig
from qnet.network.routing_events import LinkMetrics, RouteEntry
from qnet.network.routing_spf import Graph, link_metrics, shortest_paths
from qnet.topology import RoutingSpec, Topology

_NS_PER_MS = 1_000_000
#: Intervals and ages travel as uint64 ns: at extreme time scales they are capped below that.
_MAX_NS = 2**62
#: Advert refresh and maximum age of ``RoutingConfig``, read as wall-clock time.
_DEFAULTS = RoutingConfig()


def routing_config(spec: RoutingSpec, time_scale: float) -> RoutingConfig:
    """The core's settings for the topology's ``[routing]`` at ``time_scale``."""

    def physical(wall_ns: float) -> int:
        return min(_MAX_NS, max(1, round(wall_ns * time_scale)))

    hello = physical(spec.hello_interval_ms * _NS_PER_MS)
    max_age = physical(_DEFAULTS.max_age_ns)
    return RoutingConfig(
        hello_interval_ns=hello,
        # Rounding must not make the dead interval reach the hello interval.
        dead_interval_ns=max(physical(spec.dead_interval_ms * _NS_PER_MS), hello + 1),
        retransmit_interval_ns=physical(spec.retransmit_interval_ms * _NS_PER_MS),
        advert_refresh_ns=max(1, min(physical(_DEFAULTS.advert_refresh_ns), max_age // 2)),
        max_age_ns=max(max_age, 2),
        fidelity_threshold=spec.fidelity_threshold,
        startup_wait_ns=2 * hello,
    )


def local_link_metrics(topology: Topology, node: str, threshold: float) -> dict[str, LinkMetrics]:
    """Rate and fidelity at ``threshold`` of each of ``node``'s links, by neighbour, from the
    link layer's planner (``routing_spf.link_metrics``)."""
    here = (node, topology.node(node).params)
    out = {}
    for link in topology.links_of(node):
        peer = link.other(node)
        out[peer] = link_metrics(link.params, here, (peer, topology.node(peer).params), threshold)
    return out


def topology_graph(topology: Topology, threshold: float) -> Graph:
    """The graph SPF sees when every node and link of ``topology`` is up: usable links only
    (a positive rate at ``threshold``), both directions."""
    graph: Graph = {name: {} for name in topology.node_names}
    for node in topology.node_names:
        for peer, metrics in local_link_metrics(topology, node, threshold).items():
            if metrics.rate_hz > 0.0 and metrics.fidelity >= threshold:
                graph[node][peer] = metrics
    return graph


def topology_routes(topology: Topology, node: str, threshold: float) -> dict[str, RouteEntry]:
    """``node``'s routing table when every node and link of ``topology`` is up."""
    memory = {n.name: n.params.memory_qubits for n in topology.nodes}
    return shortest_paths(node, topology_graph(topology, threshold), memory)


def hop_diameter(topology: Topology) -> int:
    """The most hops between two connected nodes (k of the convergence bound)."""
    neighbours = {n: topology.neighbours(n) for n in topology.node_names}
    longest = 0
    for source in neighbours:
        hops = {source: 0}
        todo = deque([source])
        while todo:
            here = todo.popleft()
            for peer in neighbours[here]:
                if peer not in hops:
                    hops[peer] = hops[here] + 1
                    todo.append(peer)
        longest = max(longest, *hops.values())
    return longest
