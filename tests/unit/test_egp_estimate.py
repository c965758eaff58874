"""The link layer's fidelity estimator against the backend's engine and the reference formulas,
and purification against DEJMPS (exact states, then statistics over the real protocol)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qnet.link import estimate
from qnet.link.events import Kind
from qnet.physical.channel_core import ChannelCore
from qnet.physical.gates import BELL_PROJECTORS, Basis, GateName, Matrix
from qnet.physical.heralding import heralding_model
from qnet.physical.params import LinkParams, NodeParams, Scheme
from tests.unit.test_egp_harness import A, B, EgpPair, check_invariants

MEMORIES = [
    NodeParams(),
    NodeParams(memory_depolar_rate_hz=30.0),
    NodeParams(t1_s=0.02),
    NodeParams(t2_s=0.01),
    NodeParams(t1_s=0.03, t2_s=0.01),
    NodeParams(t1_s=0.05, t2_s=0.02, memory_depolar_rate_hz=10.0),
]


def _bell_diagonal(c: tuple[float, float, float, float]) -> Matrix:
    rho: Matrix = np.zeros((4, 4), dtype=np.complex128)
    for ci, p in zip(c, BELL_PROJECTORS, strict=True):
        rho += ci * p
    return rho


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("scheme", list(Scheme))
def test_estimate_matches_the_engine_for_a_stored_pair(memory: NodeParams, scheme: Scheme) -> None:
    """Herald a pair on the real backend, let both halves idle (touched at odd moments, as the
    backend applies noise lazily), and compare with the closed form."""
    link = LinkParams(length_km=5.0, scheme=scheme, source_fidelity=0.97, bright_state=0.05)
    other = NodeParams(t1_s=0.04, t2_s=0.03)
    ch = ChannelCore(seed=3)
    ch.register_node(A, memory, 0)
    ch.register_node(B, other, 0)
    ch.declare_link(A, B, link, 0)
    qa, qb = ch.allocate(A, 1, 0)[0], ch.allocate(B, 1, 0)[0]
    ch.start_generation(A, B, [qa], 0, bright_state=0.05)
    ch.start_generation(B, A, [qb], 0)
    t = ch.next_deadline()
    assert t is not None
    ch.advance(t)
    herald = ch.pop_events()[0]
    rho0 = estimate.fresh_pair(link, herald.bright_state or 0.05, herald.bell_index)
    for later in (t + 1_000_000, t + 4_000_000, t + 9_000_000):
        true = ch.oracle_pair_fidelity(qa, qb, herald.bell_index, later)
        dt = later - herald.emitted_ns
        est = estimate.pair_fidelity(
            estimate.age(rho0, (memory, other), (dt, dt)), herald.bell_index
        )
        # The backend applies noise lazily, per interval between touches, and amplitude
        # damping does not commute with depolarising: with both, how the idle time was split
        # matters slightly (≈1e-5 here). Alone, each noise composes exactly.
        both = memory.t1_s > 0 and memory.memory_depolar_rate_hz > 0
        assert est == pytest.approx(true, abs=1e-3 if both else 1e-9)


def test_fresh_fidelity_is_the_heralding_model() -> None:
    link = LinkParams(length_km=10.0, source_fidelity=0.98)
    for alpha in (0.01, 0.1, 0.3):
        model = heralding_model(link, alpha)
        for index in (1, 3):
            rho = estimate.fresh_pair(link, alpha, index)
            assert estimate.pair_fidelity(rho, index) == pytest.approx(model.fidelity(index))


@pytest.mark.parametrize("f0", [0.7, 0.9, 0.99])
def test_depolarising_memory_is_werner_decay(f0: float) -> None:
    """With depolarising memories a Werner pair follows F(t) = ¼ + (F₀ − ¼)e^(−Γt) with Γ the
    sum of both sides' rates."""
    rho = _bell_diagonal((f0, (1 - f0) / 3, (1 - f0) / 3, (1 - f0) / 3))
    mem = (NodeParams(memory_depolar_rate_hz=40.0), NodeParams(memory_depolar_rate_hz=60.0))
    for t_ns in (0, 1_000_000, 10_000_000, 50_000_000):
        aged = estimate.age(rho, mem, (t_ns, t_ns))
        assert estimate.pair_fidelity(aged, 0) == pytest.approx(
            estimate.werner_fidelity(f0, 100.0, t_ns), abs=1e-12
        )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0.7, 0.1, 0.15, 0.05), (0.8, 0.05, 0.05, 0.1)),
        ((0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3), (0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3)),
        ((0.6, 0.3, 0.05, 0.05), (0.6, 0.05, 0.3, 0.05)),
    ],
)
def test_dejmps_exact_state_matches_the_formula(
    first: tuple[float, float, float, float], second: tuple[float, float, float, float]
) -> None:
    p, rho = estimate.dejmps(
        _bell_diagonal(first), _bell_diagonal(second), NodeParams(), NodeParams()
    )
    p_ref, coeffs = estimate.dejmps_bell_diagonal(first, second)
    assert p == pytest.approx(p_ref, abs=1e-12)
    assert estimate.bell_coefficients(rho) == pytest.approx(coeffs, abs=1e-12)


def test_dejmps_circuit_on_the_engine_matches_the_estimator() -> None:
    """Run the gates the cores emit on the backend's engine, project on equal outcomes by hand,
    and compare with ``estimate.dejmps`` (gate errors included)."""
    master = NodeParams(gate_error_1q=0.01, gate_error_2q=0.03)
    slave = NodeParams(gate_error_1q=0.02, gate_error_2q=0.01)
    ch = ChannelCore(seed=1)
    ch.register_node(A, master, 0)
    ch.register_node(B, slave, 0)
    a1, a2 = ch.allocate(A, 2, 0)
    b1, b2 = ch.allocate(B, 2, 0)
    pair1 = _bell_diagonal((0.8, 0.1, 0.06, 0.04))
    pair2 = _bell_diagonal((0.75, 0.05, 0.1, 0.1))
    ch.engine.set_state((a1, b1), pair1)
    ch.engine.set_state((a2, b2), pair2)
    for q in (a1, a2):
        ch.apply_gate(A, GateName.RX, [q], estimate.MASTER_ANGLE, 0)
    for q in (b1, b2):
        ch.apply_gate(B, GateName.RX, [q], estimate.SLAVE_ANGLE, 0)
    ch.apply_gate(A, GateName.CNOT, [a1, a2], 0.0, 0)
    ch.apply_gate(B, GateName.CNOT, [b1, b2], 0.0, 0)
    full = ch.engine.reduced([a1, b1, a2, b2]).reshape(4, 2, 2, 4, 2, 2)
    kept = full[:, 0, 0, :, 0, 0] + full[:, 1, 1, :, 1, 1]
    p_engine = float(np.real(np.trace(kept)))
    p, rho = estimate.dejmps(pair1, pair2, master, slave)
    assert p == pytest.approx(p_engine, abs=1e-12)
    assert np.allclose(rho, kept / p_engine, atol=1e-12)


def test_purification_raises_fidelity_per_dejmps() -> None:
    """Werner pairs of fidelity 0.85 (double-click, noiseless nodes): one DEJMPS round must
    succeed with probability p and deliver fidelity F' of the formula. Both ends deliver the
    same pairs, with estimates within 0.01 of the true state."""
    f0 = 0.85
    link = LinkParams(length_km=1.0, scheme=Scheme.DOUBLE_CLICK, source_fidelity=f0)
    werner = (f0, (1 - f0) / 3, (1 - f0) / 3, (1 - f0) / 3)
    p_ref, coeffs = estimate.dejmps_bell_diagonal(werner, werner)
    target = 0.87  # above the raw 0.85, below one round's output
    assert coeffs[0] > target > f0
    plan = estimate.plan(link, NodeParams(), NodeParams(), target)
    assert plan is not None
    assert plan.rounds == 1
    pair = EgpPair(link=link, seed=11)
    n = 150
    cid = pair.create(B, number=n, min_fidelity=target, kind=Kind.KEEP)
    pair.run()
    check_invariants(pair, {(B, cid): n})
    oks = pair.oks(A)
    assert len(oks) == n
    assert all(ok.bell_index == 0 for ok in oks)
    assert all(ok.fidelity_estimate == pytest.approx(coeffs[0], abs=1e-9) for ok in oks)
    true = [t for _, t in pair.fidelity_checks]
    assert len(true) == n  # checked at the first delivery; the harness then frees the half
    assert sum(true) / len(true) == pytest.approx(coeffs[0], abs=0.01)
    counters = pair.cores[A].counters
    runs = counters["rounds"]
    successes = runs - counters["failed_rounds"]
    sigma = math.sqrt(p_ref * (1 - p_ref) / runs)
    assert abs(successes / runs - p_ref) < 4 * sigma


def test_plan_takes_the_largest_bright_state_meeting_the_target() -> None:
    link = LinkParams(length_km=5.0)
    nodes = (NodeParams(), NodeParams())
    for target in (0.7, 0.8, 0.95):
        plan = estimate.plan(link, *nodes, target)
        assert plan is not None
        assert plan.rounds == 0
        assert plan.fidelity >= target
        worse = estimate._evaluate(link, nodes, plan.bright_state * 1.01, 0, 0)
        assert worse is not None
        assert worse.fidelity < target + 1e-3


def test_unreachable_target_has_no_plan() -> None:
    link = LinkParams(length_km=5.0, source_fidelity=0.6)
    noisy = NodeParams(gate_error_2q=0.2, measure_error=0.1)
    assert estimate.plan(link, noisy, noisy, 0.95) is None


@pytest.mark.parametrize("basis", [Basis.Z, Basis.X, Basis.Y])
def test_measure_directly_correlations_follow_the_bell_index(basis: Basis) -> None:
    """Pure Ψ± pairs (double-click, perfect source): outcomes are (anti)correlated exactly as
    ⟨σσ⟩ of the reported Bell state says: ZZ = −1 for Ψ, XX = ±1 for Ψ±, YY = −XX·ZZ."""
    from qnet.link.events import BasisChoice

    link = LinkParams(length_km=1.0, scheme=Scheme.DOUBLE_CLICK)
    pair = EgpPair(link=link, seed=4)
    choice = BasisChoice(basis.value)
    cid = pair.create(A, number=30, min_fidelity=0.9, kind=Kind.MEASURE, basis=choice)
    pair.run()
    check_invariants(pair, {(A, cid): 30})
    for ma, mb in zip(pair.oks(A), pair.oks(B), strict=True):
        assert ma.pair_id == mb.pair_id
        assert ma.basis is basis
        assert mb.basis is basis
        assert ma.outcome is not None
        assert mb.outcome is not None
        x, z = ma.bell_index & 1, ma.bell_index >> 1
        zz, xx = (-1 if x else 1), (-1 if z else 1)
        sign = {Basis.Z: zz, Basis.X: xx, Basis.Y: -xx * zz}[basis]
        assert (1 if ma.outcome == mb.outcome else -1) == sign


def test_keep_pairs_are_in_the_reported_bell_state() -> None:
    link = LinkParams(length_km=1.0, scheme=Scheme.DOUBLE_CLICK)
    pair = EgpPair(link=link, seed=6)
    cid = pair.create(B, number=10, min_fidelity=0.99)
    pair.run()
    check_invariants(pair, {(B, cid): 10})
    assert len(pair.fidelity_checks) == 10
    assert all(true == pytest.approx(1.0) for _, true in pair.fidelity_checks)


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("dt", [(0, 0), (3_000_000, 0), (1_000_000, 7_000_000)])
def test_aged_weights_are_the_aged_state_s_bell_coefficients(
    memory: NodeParams, dt: tuple[int, int]
) -> None:
    """The closed form for depolarising memories gives what aging the 4×4 state gives; any
    other memory noise has no closed form here (None: the caller ages the matrix)."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
    rho = a @ a.conj().T
    rho /= np.trace(rho)
    nodes = (memory, NodeParams(memory_depolar_rate_hz=5.0))
    weights = estimate.aged_weights(rho, nodes, dt)
    # Side 0's T1/T2 act only if it aged at all.
    only_depolarising = (memory.t1_s <= 0 and memory.t2_s <= 0) or dt[0] == 0
    if not only_depolarising:
        assert weights is None
        return
    assert weights is not None
    expected = estimate.bell_coefficients(estimate.age(rho, nodes, dt))
    assert weights == pytest.approx(expected, abs=1e-12)
    # Asked again for the same state: the same answer (its coefficients are kept).
    assert estimate.aged_weights(rho, nodes, dt) == weights
