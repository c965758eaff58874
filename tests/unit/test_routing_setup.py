"""How a node's routing core is set up from the topology: timers scaled to physical time, link
metrics from the planner, the tables the topology implies."""

from __future__ import annotations

from pathlib import Path

import pytest

from qnet.network.routing_spf import link_metrics
from qnet.node.routing_setup import (
    hop_diameter,
    local_link_metrics,
    routing_config,
    topology_graph,
    topology_routes,
)
from qnet.topology import RoutingSpec, load_topology, parse_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MS = 1_000_000


def test_intervals_are_wall_clock_scaled_to_physical_time() -> None:
    spec = RoutingSpec(hello_interval_ms=100, dead_interval_ms=400, retransmit_interval_ms=50)
    at_one = routing_config(spec, 1.0)
    assert (at_one.hello_interval_ns, at_one.dead_interval_ns) == (100 * MS, 400 * MS)
    assert at_one.retransmit_interval_ns == 50 * MS
    assert at_one.fidelity_threshold == spec.fidelity_threshold
    # A daemon at time scale 0.05 lives 20 wall seconds per physical second: the same wall
    # intervals are 20 times shorter in physical time, refresh and maximum age too.
    slow = routing_config(spec, 0.05)
    assert (slow.hello_interval_ns, slow.dead_interval_ns) == (5 * MS, 20 * MS)
    assert slow.max_age_ns * 20 == at_one.max_age_ns
    assert slow.advert_refresh_ns < slow.max_age_ns


@pytest.mark.parametrize("scale", [1e-9, 1e-3, 1.0, 1e3, 1e9])
def test_every_scale_gives_a_valid_config_the_wire_can_carry(scale: float) -> None:
    for spec in (RoutingSpec(), RoutingSpec(60_000, 600_000, 60_000, 1.0)):
        config = routing_config(spec, scale)  # RoutingConfig checks its own rules
        assert config.dead_interval_ns > config.hello_interval_ns
        assert max(config.dead_interval_ns, config.max_age_ns) < 2**64


def test_local_metrics_come_from_the_planner() -> None:
    topology = load_topology(EXAMPLES / "diamond.toml")
    metrics = local_link_metrics(topology, "alice", 0.8)
    assert set(metrics) == {"r1", "r2"}
    link = topology.link("alice", "r2")
    ends = [(n, topology.node(n).params) for n in ("r2", "alice")]
    assert metrics["r2"] == link_metrics(link.params, ends[0], ends[1], 0.8)
    assert metrics["r1"].rate_hz > metrics["r2"].rate_hz > 0  # 5 km beats 8 km


def test_unusable_links_are_left_out_of_the_graph() -> None:
    noisy = load_topology(EXAMPLES / "noisy_two_nodes.toml")
    assert topology_graph(noisy, 0.8) == {"alice": {}, "bob": {}}
    assert topology_routes(noisy, "alice", 0.8) == {}
    assert set(topology_routes(noisy, "alice", 0.4)) == {"bob"}


def test_hop_diameter() -> None:
    assert hop_diameter(load_topology(EXAMPLES / "chain4.toml")) == 3
    assert hop_diameter(load_topology(EXAMPLES / "ring10.toml")) == 5
    assert hop_diameter(load_topology(EXAMPLES / "diamond.toml")) == 2
    lone = parse_topology('[[node]]\nname = "a"\n[[node]]\nname = "b"\n')
    assert hop_diameter(lone) == 0
