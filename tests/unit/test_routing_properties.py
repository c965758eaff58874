"""Property tests of link-state routing over random topologies: after convergence every table
equals a reference shortest-path computation and forwarding has no loops; after a link is cut
(silently or with notice), a daemon stops, restarts or a link's metrics change, the tables
reconverge within the stated bound; after the damage is undone they come back."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.network.routing import NotConverged
from qnet.network.routing_events import LinkMetrics
from tests.unit.test_routing_harness import MS, Faults, RoutingNet, TrueLink, key


@st.composite
def networks(draw: st.DrawFn) -> RoutingNet:
    """5-12 nodes; sparse to dense, connected or not; rates 1 Hz-1 MHz, fidelities 0.5-1
    (threshold 0.7), a few nodes that cannot swap, link delays 1 µs-2 ms."""
    n = draw(st.integers(5, 12))
    names = [f"n{i:02d}" for i in range(n)]
    density = draw(st.sampled_from([10, 20, 35]))  # percent of pairs linked
    pairs: set[tuple[str, str]] = set()
    if draw(st.booleans()):  # connected: a random spanning chain first
        order = draw(st.permutations(names))
        pairs.update(key(a, b) for a, b in itertools.pairwise(order))
    for a, b in itertools.combinations(names, 2):
        if draw(st.integers(0, 99)) < density:
            pairs.add(key(a, b))
    links = {}
    for pair in sorted(pairs):
        rate = 0.0 if draw(st.integers(0, 19)) == 0 else 10 ** draw(st.floats(0.0, 6.0))
        fidelity = draw(st.floats(0.5, 1.0))
        delay = draw(st.integers(1_000, 2 * MS))
        links[pair] = TrueLink(LinkMetrics(rate, fidelity), delay)
    memory = {name: draw(st.sampled_from([1, 2, 8, 8, 8])) for name in names}
    return RoutingNet(memory, links, seed=draw(st.integers(0, 2**16)))


_EVENTS = ["cut_silent", "cut_notified", "stop", "restart_at_once", "metrics"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), event=st.sampled_from(_EVENTS), pick=st.integers(0, 10**6), data=st.data())
def test_tables_match_the_reference_and_reconverge(
    net: RoutingNet, event: str, pick: int, data: st.DataObject
) -> None:
    net.start_all()
    with pytest.raises(NotConverged):
        net.cores["n00"].route("n01")
    net.converge_within_bound()
    net.assert_routes_answer()

    links = sorted(net.links)
    nodes = sorted(net.memory)
    if event in ("cut_silent", "cut_notified") and links:
        a, b = links[pick % len(links)]
        notify = event == "cut_notified"
        net.cut_link(a, b, notify=notify)
        net.converge_within_bound()
        net.assert_routes_answer()
        net.restore_link(a, b, notify=notify)
    elif event == "stop":
        victim = nodes[pick % len(nodes)]
        net.kill(victim)
        net.converge_within_bound()
        net.assert_routes_answer()
        net.start(victim)
        with pytest.raises(NotConverged):
            net.cores[victim].route(nodes[(pick + 1) % len(nodes)])
    elif event == "restart_at_once":  # back before its neighbours notice it was gone
        victim = nodes[pick % len(nodes)]
        old = net.cores[victim].database()[victim]
        net.kill(victim)
        net.start(victim)
        net.converge_within_bound()
        net.assert_routes_answer()
        own = net.cores[victim].database()[victim]
        assert own.seq > old.seq or (own.seq == old.seq and own.links == old.links)
        for core in net.cores.values():  # everyone holds its new advert, not the old one
            held = core.database().get(victim)
            assert held is None or (held.seq, held.links) == (own.seq, own.links)
        return
    elif event == "metrics" and links:
        a, b = links[pick % len(links)]
        before = net.links[key(a, b)].metrics
        rate = data.draw(st.sampled_from([0.0, 0.5, 5e6]))
        net.set_metrics(a, b, LinkMetrics(rate, data.draw(st.floats(0.5, 1.0))))
        net.converge_within_bound()
        net.assert_routes_answer()
        net.set_metrics(a, b, before)
    net.converge_within_bound()
    net.assert_routes_answer()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), seed=st.integers(0, 2**16))
def test_converges_despite_loss_duplication_and_reordering(net: RoutingNet, seed: int) -> None:
    """Reliable flooding repairs loss. The dead interval is 10 hellos and at most 5 messages
    in a row are lost, so loss alone does not bring neighbours down. Without a bound (losses
    delay by retransmissions), the tables must still end equal to the reference, and stay."""
    config = net.config.__class__(
        hello_interval_ns=50 * MS,
        dead_interval_ns=500 * MS,
        retransmit_interval_ns=20 * MS,
        advert_refresh_ns=net.config.advert_refresh_ns,
        max_age_ns=net.config.max_age_ns,
        fidelity_threshold=net.config.fidelity_threshold,
    )
    lossy = RoutingNet(
        net.memory,
        net.links,
        config=config,
        faults=Faults(0.2, 0.1, 3 * MS, max_loss_run=5),
        seed=seed,
    )
    lossy.start_all()
    lossy.run_for(3 * config.dead_interval_ns)
    lossy.converge_within_bound(config.dead_interval_ns)
    lossy.assert_routes_answer()
    victim = sorted(lossy.links)[seed % len(lossy.links)] if lossy.links else None
    if victim is not None:
        lossy.cut_link(*victim, notify=False)
        lossy.run_for(3 * config.dead_interval_ns)
        lossy.converge_within_bound(config.dead_interval_ns)


@pytest.mark.parametrize("size", [6, 9])
def test_ties_are_broken_the_same_way_everywhere(size: int) -> None:
    """A grid with every link equal is full of equal-cost paths: tables must still agree hop by
    hop (no loops, paths made of the next hops' paths) and costs equal the reference's."""
    rng = random.Random(size)
    names = [f"g{i}" for i in range(size)]
    width = 3
    links = {}
    for i, name in enumerate(names):
        for j in (i + 1, i + width):
            if j < size and (j == i + width or j % width):
                delay = rng.randint(1, 9) * MS
                links[key(name, names[j])] = TrueLink(LinkMetrics(50.0, 0.9), delay)
    net = RoutingNet(dict.fromkeys(names, 4), links)
    net.start_all()
    net.run_for(net.bound_ns())
    net.assert_no_loops()
    expected = net.reference()
    for node, core in net.cores.items():
        table = core.table()
        assert set(table) == set(expected[node])
        for dest, (_, cost, _) in expected[node].items():
            assert table[dest].cost_s == pytest.approx(cost, rel=1e-12)
