"""Shortest paths, costs and fidelities of routing (``routing_spf``), without the protocol."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.link import estimate
from qnet.network.routing_events import AdvertLink, LinkMetrics, LinkStateAdvert
from qnet.network.routing_spf import (
    COST_UNIT_S,
    link_cost_units,
    link_metrics,
    path_fidelity,
    shortest_paths,
    swap_fidelity,
    usable_graph,
)
from qnet.physical.params import LinkParams, NodeParams
from tests.unit.test_routing_harness import key, reference_routes

_fidelity = st.floats(0.25, 1.0)


@given(st.lists(_fidelity, max_size=8))
def test_path_fidelity_is_the_werner_swap_formula_hop_after_hop(fidelities: list[float]) -> None:
    expected = 1.0
    for i, f in enumerate(fidelities):
        expected = f if i == 0 else expected * f + (1 - expected) * (1 - f) / 3
    assert path_fidelity(fidelities) == pytest.approx(expected, abs=1e-12)


@given(_fidelity, _fidelity, _fidelity)
def test_swapping_is_associative_and_commutative(a: float, b: float, c: float) -> None:
    left = swap_fidelity(swap_fidelity(a, b), c)
    right = swap_fidelity(a, swap_fidelity(c, b))
    assert left == pytest.approx(right, abs=1e-12)
    assert swap_fidelity(a, 1.0) == pytest.approx(a)
    assert swap_fidelity(a, 0.25) == pytest.approx(0.25)


def test_cost_is_seconds_per_pair_in_integer_units() -> None:
    assert link_cost_units(1000.0) * COST_UNIT_S == pytest.approx(1e-3)
    assert link_cost_units(1e30) == 1  # never free, so paths stay loop-free


def test_link_metrics_come_from_the_link_layer_planner() -> None:
    link = LinkParams(length_km=5.0)
    noisy = NodeParams(t1_s=1.0, t2_s=0.5, gate_error_2q=0.01)
    metrics = link_metrics(link, ("b", NodeParams()), ("a", noisy), 0.9)
    plan = estimate.plan(link, noisy, NodeParams(), 0.9)  # master = "a", the lower name
    assert plan is not None
    assert metrics == LinkMetrics(plan.rate_hz, plan.fidelity)
    assert metrics.fidelity >= 0.9
    # A stricter threshold costs rate (a smaller bright state or purification).
    assert link_metrics(link, ("a", noisy), ("b", NodeParams()), 0.97).rate_hz < plan.rate_hz


def test_a_link_that_cannot_reach_the_threshold_gets_rate_zero() -> None:
    link = LinkParams(length_km=5.0, source_fidelity=0.6)
    metrics = link_metrics(link, ("a", NodeParams()), ("b", NodeParams()), 0.999)
    assert metrics.rate_hz == 0.0
    assert 0.25 <= metrics.fidelity < 0.999


def _advert(origin: str, links: dict[str, tuple[float, float]], memory: int = 4) -> LinkStateAdvert:
    body = tuple(AdvertLink(p, r, f) for p, (r, f) in sorted(links.items()))
    return LinkStateAdvert(origin, 1, 0, memory, body)


def test_only_two_way_links_above_the_threshold_count_with_the_worse_end() -> None:
    adverts = {
        "a": _advert("a", {"b": (10.0, 0.9), "c": (10.0, 0.9), "d": (5.0, 0.95)}),
        "b": _advert("b", {"a": (8.0, 0.95)}),
        "c": _advert("c", {}),  # c does not list a: one-way, unused
        "d": _advert("d", {"a": (5.0, 0.6)}),  # d's end is below the threshold
    }
    graph = usable_graph(adverts, 0.7)
    assert graph == {
        "a": {"b": LinkMetrics(8.0, 0.9)},
        "b": {"a": LinkMetrics(8.0, 0.9)},
        "c": {},
        "d": {},
    }


_weights = st.sampled_from([1.0, 2.0, 3.0])  # few distinct costs: many ties


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 8),
    edges=st.sets(st.tuples(st.integers(0, 7), st.integers(0, 7), _weights), max_size=20),
    memory=st.lists(st.sampled_from([1, 2, 4]), min_size=8, max_size=8),
)
def test_shortest_paths_are_optimal_and_consistent_hop_by_hop(
    n: int, edges: set[tuple[int, int, float]], memory: list[int]
) -> None:
    """With many ties: costs equal an independent Dijkstra's, and every node's route is its
    link to the next hop followed by the next hop's own route (hence no loops)."""
    names = [f"v{i}" for i in range(n)]
    links = {
        key(names[a], names[b]): LinkMetrics(w, 0.9)
        for a, b, w in edges
        if a < n and b < n and a != b
    }
    mem = dict(zip(names, memory, strict=False))
    graph: dict[str, dict[str, LinkMetrics]] = {v: {} for v in names}
    for (a, b), m in links.items():
        graph[a][b] = graph[b][a] = m
    tables = {v: shortest_paths(v, graph, mem) for v in names}
    expected = reference_routes(mem, links, 0.0)
    for v in names:
        assert set(tables[v]) == set(expected[v])
        for dest, entry in tables[v].items():
            assert entry.cost_s == pytest.approx(expected[v][dest][1], rel=1e-12)
            assert entry.path[0] == v
            assert entry.path[-1] == dest
            assert all(mem[x] >= 2 for x in entry.path[1:-1])
            if len(entry.path) > 2:
                assert tables[entry.next_hop][dest].path == entry.path[1:]
            hops = zip(entry.path, entry.path[1:], strict=False)
            assert entry.fidelity == pytest.approx(
                path_fidelity(graph[a][b].fidelity for a, b in hops)
            )
            assert math.isfinite(entry.cost_s)


def test_ties_prefer_the_path_smallest_read_from_the_destination() -> None:
    # a square a-b-d, a-c-d with equal costs: from d back, ("d", "b", "a") < ("d", "c", "a").
    square = {("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")}
    graph: dict[str, dict[str, LinkMetrics]] = {v: {} for v in "abcd"}
    for a, b in square:
        graph[a][b] = graph[b][a] = LinkMetrics(1.0, 0.9)
    mem = dict.fromkeys("abcd", 2)
    assert shortest_paths("a", graph, mem)["d"].path == ("a", "b", "d")
    assert shortest_paths("d", graph, mem)["a"].path == ("d", "b", "a")
    for perm in itertools.permutations("abcd"):  # insertion order does not matter
        shuffled = {v: dict(sorted(graph[v].items(), reverse=True)) for v in perm}
        assert shortest_paths("a", shuffled, mem)["d"].path == ("a", "b", "d")
