"""Multiplexed generation (``LinkParams.multiplexing``) through ChannelCore, against theory.

With multiplexing m, the first m qubits armed at one end attempt with the first m at the other
(the i-th with the i-th), each pair on its own: pair i succeeds after a geometric number of
attempts of mean 1/p, independently of the others. Pairs armed at one instant share the cycle
grid, and a pair further back moves up when one succeeds, which is on that grid too; so with
at least m qubits armed at each end, a cycle heralds at least one pair with probability
    q = 1 − (1 − p)^m,
the gaps between herald instants are cycle × Geometric(q), and an instant that heralds heralds
k pairs (all at that instant, a tie) with probability C(m, k) p^k (1 − p)^(m−k) / q, k ≥ 1;
in all, m·p pairs per cycle. A pair's state does not depend on m.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from qnet.channel import wire
from qnet.errors import FailedPrecondition, InvalidArgument
from qnet.physical.channel_core import ChannelCore
from qnet.physical.events import HeraldEvent
from qnet.physical.params import MAX_MULTIPLEXING, LinkParams, NodeParams, Scheme
from qnet.topology import TopologyError, parse_topology, topology_to_toml
from qnet.v1 import channel_pb2 as pb
from tests.unit.physics_reference import (
    A,
    B,
    binomial_bound,
    mean_bound,
    run_until_idle,
    two_node_core,
)

EXACT = 1e-9
ARMED_AT = 7_000


@dataclass(frozen=True)
class Case:
    link: LinkParams
    pairs: int


CASES = {
    # The SeQUeNCe side-by-side link (tests/bench/README.md): p ≈ 0.161, about 1 in 4 instants
    # heralds more than one pair.
    "double-20km-m4": Case(
        LinkParams(
            length_km=20.0,
            scheme=Scheme.DOUBLE_CLICK,
            source_fidelity=0.95,
            attempt_overhead_ns=100_000,
            multiplexing=4,
        ),
        8000,
    ),
    # p ≈ 0.37: ties are common.
    "double-2km-m3": Case(
        LinkParams(length_km=2.0, scheme=Scheme.DOUBLE_CLICK, source_fidelity=0.9, multiplexing=3),
        8000,
    ),
    "single-10km-m8": Case(
        LinkParams(
            length_km=10.0, scheme=Scheme.SINGLE_CLICK, source_fidelity=0.97, multiplexing=8
        ),
        8000,
    ),
}
NAMES = list(CASES)


@dataclass(frozen=True)
class Run:
    case: Case
    p: float
    cycle_ns: int
    fidelity: float
    #: Arming position of each qubit, per end.
    position: dict[int, int]
    #: Alice's and bob's events per herald instant, in the order they came.
    instants: tuple[tuple[int, tuple[HeraldEvent, ...], tuple[HeraldEvent, ...]], ...]
    #: Each pair's oracle fidelity with its heralded state, at its herald.
    oracle: tuple[float, ...]

    @property
    def q(self) -> float:
        return 1 - (1 - self.p) ** self.case.link.multiplexing

    def events(self, node: str) -> list[HeraldEvent]:
        return [e for _, at_a, at_b in self.instants for e in (at_a if node == A else at_b)]

    def full_gaps(self) -> list[int]:
        """Gaps (ns) between herald instants during which at least m pairs were armed."""
        m, left, last, gaps = self.case.link.multiplexing, self.case.pairs, ARMED_AT, []
        for when, at_a, _ in self.instants:
            if left >= m:
                gaps.append(when - last)
            left -= len(at_a)
            last = when
        return gaps

    def full_counts(self) -> list[int]:
        """Pairs heralded per instant, for instants reached with at least m pairs armed."""
        m, left, counts = self.case.link.multiplexing, self.case.pairs, []
        for _, at_a, _ in self.instants:
            if left >= m:
                counts.append(len(at_a))
            left -= len(at_a)
        return counts


def armed_core(link: LinkParams, pairs: int, *, seed: int) -> tuple[ChannelCore, dict[int, int]]:
    core = two_node_core(NodeParams(memory_qubits=pairs), link, seed=seed)
    qa = core.allocate(A, pairs, ARMED_AT)
    qb = core.allocate(B, pairs, ARMED_AT)
    core.start_generation(A, B, qa, ARMED_AT)
    core.start_generation(B, A, qb, ARMED_AT)
    return core, {q: i for i, q in enumerate(qa)} | {q: i for i, q in enumerate(qb)}


@functools.cache
def run(name: str) -> Run:
    case = CASES[name]
    core, position = armed_core(case.link, case.pairs, seed=sum(map(ord, name)))
    instants = []
    oracle = []
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
        events = core.pop_events()
        at_a = tuple(e for e in events if e.node == A)
        at_b = tuple(e for e in events if e.node == B)
        for ea, eb in zip(at_a, at_b, strict=True):
            oracle.append(core.oracle_pair_fidelity(ea.qubit, eb.qubit, ea.bell_index, deadline))
        instants.append((deadline, at_a, at_b))
    model = core.link_theory(A, B)
    return Run(
        case,
        model.success_probability,
        model.cycle_ns,
        model.fidelity(),
        position,
        tuple(instants),
        tuple(oracle),
    )


@pytest.mark.parametrize("name", NAMES)
def test_gaps_between_herald_instants_are_geometric_in_q(name: str) -> None:
    r = run(name)
    gaps = r.full_gaps()
    assert all(g > 0 and g % r.cycle_ns == 0 for g in gaps)
    cycles = np.array(gaps) // r.cycle_ns
    q, n = r.q, len(cycles)
    assert abs(cycles.mean() - 1 / q) <= mean_bound((1 - q) / q**2, n)
    assert abs(np.mean(cycles == 1) - q) <= binomial_bound(q, n)


@pytest.mark.parametrize("name", NAMES)
def test_pairs_per_instant_are_binomial_given_one(name: str) -> None:
    """Ties: an instant heralds k of the m attempting pairs with the binomial law given k ≥ 1;
    per cycle that is m·p pairs."""
    r = run(name)
    m, p, q = r.case.link.multiplexing, r.p, r.q
    counts = r.full_counts()
    n = len(counts)
    seen = Counter(counts)
    assert set(seen) <= set(range(1, m + 1))
    for k in range(1, m + 1):
        expected = math.comb(m, k) * p**k * (1 - p) ** (m - k) / q
        assert abs(seen[k] / n - expected) <= binomial_bound(expected, n), k
    assert seen[1] < n, "no instant heralded two pairs: ties are not exercised"
    # Their mean, m·p/q pairs per instant, is m·p per cycle with the gaps' mean 1/q.
    mean = m * p / q
    variance = (m * p * (1 - p) + (m * p) ** 2) / q - mean**2
    assert abs(sum(counts) / n - mean) <= mean_bound(variance, n)


@pytest.mark.parametrize("name", NAMES)
def test_each_pair_succeeds_on_its_own_draw(name: str) -> None:
    """Every herald is at its pair's start + attempts × cycle, the start being the arming, or
    the instant the heralds so far reached its position − m + 1 (it moved into the first m);
    its attempts are geometric with mean 1/p."""
    r = run(name)
    m = r.case.link.multiplexing
    heralded_by: list[int] = []  # heralded_by[k]: the instant pair k + 1 in all was heralded
    for when, at_a, _ in r.instants:
        heralded_by += [when] * len(at_a)
    for e in r.events(A):
        i = r.position[e.qubit]
        start = ARMED_AT if i < m else heralded_by[i - m]
        assert e.time_ns == start + e.attempts * r.cycle_ns
    attempts = np.array([e.attempts for e in r.events(A)])
    p, n = r.p, len(attempts)
    assert abs(attempts.mean() - 1 / p) <= mean_bound((1 - p) / p**2, n)
    assert abs(np.mean(attempts == 1) - p) <= binomial_bound(p, n)


@pytest.mark.parametrize("name", NAMES)
def test_pairs_match_by_position_and_sequence(name: str) -> None:
    """Alice's i-th armed qubit pairs with bob's i-th; sequences count up by one at both ends,
    the ties of an instant in arming order; both ends agree on everything but the qubit."""
    r = run(name)
    seq = 0
    for when, at_a, at_b in r.instants:
        for ea, eb in zip(at_a, at_b, strict=True):
            seq += 1
            assert ea.sequence == eb.sequence == seq
            assert r.position[ea.qubit] == r.position[eb.qubit]
            assert ea.time_ns == eb.time_ns == when
            assert (ea.bell_index, ea.attempts, ea.emitted_ns) == (
                eb.bell_index,
                eb.attempts,
                eb.emitted_ns,
            )
        positions = [r.position[e.qubit] for e in at_a]
        assert positions == sorted(positions)
    assert seq == r.case.pairs
    assert sorted(r.position[e.qubit] for e in r.events(A)) == list(range(r.case.pairs))


@pytest.mark.parametrize("name", NAMES)
def test_fresh_pair_fidelity_does_not_depend_on_multiplexing(name: str) -> None:
    r = run(name)
    single = two_node_core(link_params=dataclasses.replace(r.case.link, multiplexing=1))
    assert abs(r.fidelity - single.link_theory(A, B).fidelity()) < EXACT
    for fidelity in r.oracle:
        assert abs(fidelity - r.fidelity) < EXACT


# -- the default, and fewer qubits armed than multiplexing ---------------------------------------


def test_default_is_one_pair_at_a_time_in_arming_order() -> None:
    assert LinkParams().multiplexing == 1
    core, position = armed_core(LinkParams(length_km=2.0), 300, seed=5)
    order = []
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
        events = core.pop_events()
        assert len(events) == 2
        order.append(position[events[0].qubit])
    assert order == list(range(300))


def test_no_more_pairs_attempt_than_the_shorter_queue() -> None:
    """multiplexing 4 with 2 qubits armed at alice: 2 pairs attempt, and bob's other 4 stay
    armed; topping alice up to 2 after each herald keeps the gaps geometric in 1 − (1 − p)²."""
    link = LinkParams(length_km=2.0, scheme=Scheme.DOUBLE_CLICK, multiplexing=4)
    core = two_node_core(NodeParams(memory_qubits=5000), link, seed=11)
    core.start_generation(A, B, core.allocate(A, 2, 0), 0)
    core.start_generation(B, A, core.allocate(B, 6, 0), 0)
    run_until_idle(core)
    assert len(core.pop_events()) == 4
    assert len(core.stop_generation(B, A, core.now)) == 4

    start = core.now
    core.start_generation(A, B, core.allocate(A, 2, start), start)
    core.start_generation(B, A, core.allocate(B, 4000, start), start)
    model = core.link_theory(A, B)
    gaps: list[int] = []
    last = start
    while len(gaps) < 1500:
        deadline = core.next_deadline()
        assert deadline is not None
        core.advance(deadline)
        events = core.pop_events()
        heralded = [e.qubit for e in events if e.node == A]
        core.free(A, heralded, deadline)
        core.free(B, [e.qubit for e in events if e.node == B], deadline)
        core.start_generation(A, B, core.allocate(A, len(heralded), deadline), deadline)
        gaps.append((deadline - last) // model.cycle_ns)
        last = deadline
    q = 1 - (1 - model.success_probability) ** 2
    assert abs(float(np.mean(gaps)) - 1 / q) <= mean_bound((1 - q) / q**2, len(gaps))


# -- pairs keep their draws; pairs that break up carry their attempts ------------------------------


def first_herald_of(core: ChannelCore, qubit: int) -> int:
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
        if any(e.qubit == qubit for e in core.pop_events()):
            return deadline
    raise AssertionError(f"qubit {qubit} was never heralded")


@pytest.mark.parametrize("seed", range(8))
def test_a_pair_keeps_its_draw_whatever_the_others_do(seed: int) -> None:
    """Pair 0's herald time is fixed when it starts: another pair joining later (on its own
    phase) or one behind it being freed (its partner moves up) does not change it."""
    link = LinkParams(length_km=20.0, scheme=Scheme.DOUBLE_CLICK, multiplexing=2)
    cycle = two_node_core(link_params=link).link_theory(A, B).cycle_ns
    alone = two_node_core(link_params=link, seed=seed)
    qa0, qb0 = alone.allocate(A, 1, 0)[0], alone.allocate(B, 1, 0)[0]
    alone.start_generation(A, B, [qa0], 0)
    alone.start_generation(B, A, [qb0], 0)
    due = first_herald_of(alone, qa0)

    core = two_node_core(link_params=link, seed=seed)
    qa = core.allocate(A, 3, 0)
    qb = core.allocate(B, 3, 0)
    core.start_generation(A, B, qa[:1], 0)
    core.start_generation(B, A, qb[:1], 0)
    joined = cycle // 3  # off the grid of pair 0
    core.start_generation(A, B, qa[1:], joined)
    core.start_generation(B, A, qb[1:], joined)
    core.free(B, [qb[1]], joined + 1)  # alice's second qubit now pairs with bob's third
    times: dict[int, int] = {}
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
        for e in core.pop_events():
            times[e.qubit] = deadline
    assert times[qa[0]] == times[qb[0]] == due
    assert times[qa[1]] == times[qb[2]]
    assert qa[2] not in times
    assert (times[qa[1]] - (joined + 1)) % cycle == 0


def test_a_pair_that_breaks_up_gives_its_attempts_to_the_next_herald() -> None:
    """Three pairs attempt from 0; at t bob disarms and arms three new qubits: the three old
    pairs' attempts so far, 3·⌊t/cycle⌋, go to the link's next herald, on top of its own."""
    link = LinkParams(length_km=20.0, scheme=Scheme.DOUBLE_CLICK, multiplexing=3)
    core = two_node_core(link_params=link, seed=3)
    cycle = core.link_theory(A, B).cycle_ns
    core.start_generation(A, B, core.allocate(A, 3, 0), 0)
    core.start_generation(B, A, core.allocate(B, 3, 0), 0)
    first = core.next_deadline()
    assert first is not None
    t = first - 1
    core.free(B, core.stop_generation(B, A, t), t)
    core.start_generation(B, A, core.allocate(B, 3, t), t)
    carried = 3 * (t // cycle)
    deadline = core.next_deadline()
    assert deadline is not None
    core.advance(deadline)
    at_a = [e for e in core.pop_events() if e.node == A]
    own = (deadline - t) // cycle
    assert (deadline - t) % cycle == 0
    assert [e.attempts for e in at_a] == [own + carried] + [own] * (len(at_a) - 1)
    run_until_idle(core)
    assert all(e.attempts == (e.time_ns - t) // cycle for e in core.pop_events())


# -- parameters, topology files and the wire ------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, MAX_MULTIPLEXING + 1, 1.5, 2.0, True, "4", None])
def test_bad_multiplexing_is_refused(value: object) -> None:
    with pytest.raises(InvalidArgument, match=r"multiplexing must be an integer in \[1, "):
        LinkParams(multiplexing=value)  # type: ignore[arg-type]


def test_good_multiplexing_is_kept() -> None:
    for value in (1, 4, MAX_MULTIPLEXING):
        assert LinkParams(multiplexing=value).multiplexing == value
        assert LinkParams(multiplexing=value).as_dict()["multiplexing"] == value


def chain_text(defaults: str, link: str = "") -> str:
    return f"""
[network]
name = "mux"

[defaults.link]
{defaults}

[[node]]
name = "a"

[[node]]
name = "b"

[[node]]
name = "c"

[[link]]
between = ["a", "b"]
{link}

[[link]]
between = ["b", "c"]
"""


def test_topology_files_set_multiplexing_and_round_trip() -> None:
    top = parse_topology(chain_text("multiplexing = 4", "multiplexing = 2"))
    assert [link.params.multiplexing for link in top.links] == [2, 4]
    assert parse_topology(topology_to_toml(top)) == top
    assert "multiplexing = 4" in topology_to_toml(top)
    plain = parse_topology(chain_text('scheme = "single_click"'))
    assert all(link.params.multiplexing == 1 for link in plain.links)
    assert "multiplexing" not in topology_to_toml(plain)


@pytest.mark.parametrize(
    ("defaults", "link", "line", "detail"),
    [
        ("multiplexing = 0", "", 6, r"multiplexing must be an integer in \[1, 100000\].*got 0"),
        ("", "multiplexing = -2", 19, r"multiplexing must be an integer in \[1, 100000\]"),
        ("multiplexing = 2.5", "", 6, "multiplexing must be an integer, got 2.5"),
        ('multiplexing = "4"', "", 6, "multiplexing must be an integer, got string '4'"),
    ],
)
def test_topology_files_with_bad_multiplexing_are_refused(
    defaults: str, link: str, line: int, detail: str
) -> None:
    with pytest.raises(TopologyError, match=detail) as info:
        parse_topology(chain_text(defaults, link), "mux.toml")
    assert info.value.field == "multiplexing"
    assert info.value.line == line


def test_the_wire_carries_multiplexing() -> None:
    params = LinkParams(length_km=20.0, scheme=Scheme.DOUBLE_CLICK, multiplexing=7)
    msg = pb.LinkParams.FromString(wire.link_params_to_wire(params).SerializeToString())
    assert msg.multiplexing == 7
    assert wire.link_params_from_wire(msg) == params
    # An older peer leaves the field unset: one pair at a time, as before.
    assert wire.link_params_from_wire(pb.LinkParams(length_km=5.0)).multiplexing == 1
    with pytest.raises(InvalidArgument, match="multiplexing"):
        wire.link_params_from_wire(pb.LinkParams(multiplexing=MAX_MULTIPLEXING + 1))


def test_a_link_declared_with_other_multiplexing_is_refused() -> None:
    core = two_node_core(link_params=LinkParams(multiplexing=2))
    core.declare_link(B, A, LinkParams(multiplexing=2), 0)
    with pytest.raises(FailedPrecondition, match=r"'multiplexing': 2.*'multiplexing': 3"):
        core.declare_link(A, B, LinkParams(multiplexing=3), 0)


def test_every_case_exercises_ties_and_out_of_order_heralds() -> None:
    """Guards the statistical cases above: each must herald pairs out of arming order."""
    for name in NAMES:
        r = run(name)
        order = [r.position[e.qubit] for e in r.events(A)]
        assert any(b < a for a, b in itertools.pairwise(order)), name
