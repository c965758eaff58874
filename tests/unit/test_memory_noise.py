"""Memory decoherence, gate and measurement noise through ChannelCore, against closed forms.

Memory noise is applied lazily when a qubit is touched; a touch without any other effect is an
RZ(0) gate (the identity, exactly, and with gate_error_1q = 0 no gate noise either) or the
oracle. States are read with core.engine.reduced, which does not touch.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from qnet.physical.channel_core import ChannelCore, memory_noise
from qnet.physical.gates import Basis, GateName
from qnet.physical.heralding import fibre_delay_ns
from qnet.physical.params import LinkParams, NodeParams, Scheme
from qnet.physical.state import StateEngine
from tests.unit.physics_reference import (
    BELL_KETS,
    PHI_PLUS,
    A,
    B,
    Matrix,
    binomial_bound,
    random_density_matrix,
    run_until_idle,
    two_node_core,
    werner,
)

EXACT = 1e-9
MS = 1_000_000  # ns


def touch(core: ChannelCore, node: str, qubit: int, now: int) -> None:
    """Bring ``qubit``'s memory noise up to ``now`` and nothing else."""
    core.apply_gate(node, GateName.RZ, [qubit], 0.0, now)


def shared_pair(core: ChannelCore, rho: Matrix, now: int = 0) -> tuple[int, int]:
    """Alice's and Bob's qubits holding ``rho``, last touched at ``now``."""
    (qa,) = core.allocate(A, 1, now)
    (qb,) = core.allocate(B, 1, now)
    core.engine.set_state((qa, qb), rho)
    return qa, qb


# -- depolarising memory: Werner decay -----------------------------------------------------


@pytest.mark.parametrize("f0", [1.0, 0.8, 0.5])
def test_werner_decay_under_memory_depolarisation(f0: float) -> None:
    """Each half depolarises with 1 − p = e^(−γt), which scales every two-body Pauli correlator
    by e^(−2γt): F(t) = ¼ + (F₀ − ¼)e^(−Γt) with Γ = 2γ."""
    gamma = 400.0
    core = two_node_core(NodeParams(memory_depolar_rate_hz=gamma))
    qa, qb = shared_pair(core, werner(f0, PHI_PLUS))
    for t in (0, MS // 10, MS, 2 * MS, 2 * MS + 1, 5 * MS):
        expected = 0.25 + (f0 - 0.25) * math.exp(-2 * gamma * t * 1e-9)
        assert abs(core.oracle_pair_fidelity(qa, qb, 0, t) - expected) < EXACT


def test_werner_decay_with_different_rates_at_the_two_ends() -> None:
    gamma_a, gamma_b = 300.0, 1100.0
    core = ChannelCore(seed=0)
    core.register_node(A, NodeParams(memory_depolar_rate_hz=gamma_a), 0)
    core.register_node(B, NodeParams(memory_depolar_rate_hz=gamma_b), 0)
    qa, qb = shared_pair(core, werner(0.9, BELL_KETS[3]))
    for t in (MS // 3, MS, 3 * MS):
        expected = 0.25 + 0.65 * math.exp(-(gamma_a + gamma_b) * t * 1e-9)
        assert abs(core.oracle_pair_fidelity(qa, qb, 3, t) - expected) < EXACT


@pytest.mark.parametrize("scheme", [Scheme.SINGLE_CLICK, Scheme.DOUBLE_CLICK])
def test_heralded_pair_decays_from_its_emission_time(scheme: Scheme) -> None:
    """Decoherence counts from emission, so at the herald the pair has already idled for the
    flight time. F(t) = ¼ + (F₀ − ¼)e^(−2γ(t − t_emit)) holds for any two-qubit state under
    equal local depolarising (it only rescales the two-body correlators), so it holds for the
    single-click state too; F₀ is the model's fresh-pair fidelity."""
    gamma = 150.0
    link = LinkParams(length_km=100.0, scheme=scheme, source_fidelity=0.95)
    core = two_node_core(NodeParams(memory_depolar_rate_hz=gamma), link, seed=5)
    model = core.link_theory(A, B)
    (qa,) = core.allocate(A, 1, 0)
    (qb,) = core.allocate(B, 1, 0)
    core.start_generation(A, B, [qa], 0)
    core.start_generation(B, A, [qb], 0)
    run_until_idle(core)
    ev = {e.node: e for e in core.pop_events()}
    herald = ev[A]
    assert herald.time_ns - herald.emitted_ns == model.flight_ns == 2 * fibre_delay_ns(50.0)
    f0 = model.fidelity(herald.bell_index)
    for t in (herald.time_ns, herald.time_ns + 3 * MS):
        expected = 0.25 + (f0 - 0.25) * math.exp(-2 * gamma * (t - herald.emitted_ns) * 1e-9)
        got = core.oracle_pair_fidelity(ev[A].qubit, ev[B].qubit, herald.bell_index, t)
        assert abs(got - expected) < EXACT


# -- T1 and T2 -----------------------------------------------------------------------------


def test_t1_population_decay() -> None:
    t1_s = 1e-3
    core = two_node_core(NodeParams(t1_s=t1_s))
    (q,) = core.allocate(A, 1, 0)
    core.apply_gate(A, GateName.X, [q], 0.0, 0)
    for t in (MS // 4, MS, 3 * MS):
        touch(core, A, q, t)
        rho = core.engine.reduced([q])
        assert abs(rho[1, 1].real - math.exp(-t * 1e-9 / t1_s)) < EXACT
        assert abs(rho[0, 0].real - (1 - math.exp(-t * 1e-9 / t1_s))) < EXACT


@pytest.mark.parametrize(("t1_s", "t2_s"), [(0.0, 5e-4), (1e-3, 5e-4), (1e-3, 2e-3), (1e-3, 0.0)])
def test_t2_coherence_decay(t1_s: float, t2_s: float) -> None:
    """|+⟩'s coherence ρ01 = ½e^(−t/T2) (T2 = 0 means none but T1's own e^(−t/2T1)); with T1 the
    excited population ρ11 = ½e^(−t/T1) as well."""
    core = two_node_core(NodeParams(t1_s=t1_s, t2_s=t2_s))
    (q,) = core.allocate(A, 1, 0)
    core.apply_gate(A, GateName.H, [q], 0.0, 0)
    for t in (MS // 5, MS, 4 * MS):
        touch(core, A, q, t)
        rho = core.engine.reduced([q])
        s = t * 1e-9
        rate = 1 / t2_s if t2_s > 0 else 1 / (2 * t1_s)
        assert abs(rho[0, 1] - 0.5 * math.exp(-s * rate)) < EXACT
        excited = 0.5 * math.exp(-s / t1_s) if t1_s > 0 else 0.5
        assert abs(rho[1, 1].real - excited) < EXACT


@pytest.mark.parametrize("f0", [1.0, 0.85, 0.6])
def test_bell_pair_under_dephasing_closed_form(f0: float) -> None:
    """Derivation. A Werner state around Φ+ is ρ = (II + λ(XX − YY + ZZ))/4 with
    λ = (4F₀ − 1)/3. Dephasing each half multiplies its X and Y components by c = e^(−t/T2),
    so XX and YY pick up c² and ZZ is unchanged: ρ(t) = (II + λc²(XX − YY) + λZZ)/4, and
    F(t) = ⟨Φ+|ρ(t)|Φ+⟩ = (1 + λ + 2λc²)/4. Substituting λ: (1 + λ)/4 = (F₀ + (1 − F₀)/3)/2 and
    λ/2 = (F₀ − (1 − F₀)/3)/2, hence
    F(t) = (F₀ + (1−F₀)/3)/2 + (F₀ − (1−F₀)/3)/2 · e^(−2t/T2)."""
    t2_s = 2e-3
    core = two_node_core(NodeParams(t2_s=t2_s))
    qa, qb = shared_pair(core, werner(f0, PHI_PLUS))
    for t in (MS // 2, 2 * MS, 7 * MS):
        decay = math.exp(-2 * t * 1e-9 / t2_s)
        expected = (f0 + (1 - f0) / 3) / 2 + (f0 - (1 - f0) / 3) / 2 * decay
        assert abs(core.oracle_pair_fidelity(qa, qb, 0, t) - expected) < EXACT


# -- lazy application ----------------------------------------------------------------------

LAZY_CASES = {
    "t1": NodeParams(t1_s=1e-3),
    "t2": NodeParams(t2_s=8e-4),
    "t1+t2": NodeParams(t1_s=1e-3, t2_s=8e-4),
    "depolar": NodeParams(memory_depolar_rate_hz=500.0),
    "depolar+t2": NodeParams(t2_s=8e-4, memory_depolar_rate_hz=500.0),
    "t1+depolar": NodeParams(t1_s=1e-3, memory_depolar_rate_hz=500.0),
    "t1+t2+depolar": NodeParams(t1_s=1e-3, t2_s=8e-4, memory_depolar_rate_hz=500.0),
}


@pytest.mark.parametrize("case", list(LAZY_CASES))
def test_lazy_noise_over_several_touches_equals_one_application(case: str) -> None:
    """Memory noise is a property of the idle time, not of how often the qubit was looked at:
    touching at 0.3, 0.7, 1.1, 1.6 ms and reading at 2 ms must equal touching once at 2 ms."""
    params = LAZY_CASES[case]
    states = []
    for touches in ([int(0.3 * MS), int(0.7 * MS), int(1.1 * MS), int(1.6 * MS)], []):
        core = two_node_core(params)
        rng = np.random.default_rng(12)
        qa, qb = shared_pair(core, random_density_matrix(rng, 2))
        (qc,) = core.allocate(A, 1, 0)
        core.engine.set_state((qc,), random_density_matrix(rng, 1))
        for t in touches:
            touch(core, A, qa, t)
            touch(core, B, qb, t)
            touch(core, A, qc, t)
        end = 2 * MS
        touch(core, A, qa, end)
        touch(core, B, qb, end)
        touch(core, A, qc, end)
        states.append(core.engine.reduced([qa, qb, qc]))
    np.testing.assert_allclose(states[0], states[1], atol=1e-12, rtol=0)


# -- gate and measurement errors -----------------------------------------------------------


def test_two_qubit_gate_error_depolarises_the_pair() -> None:
    """A 2q gate is the ideal gate followed by two-qubit depolarising with p: the pair's
    fidelity with the ideal gate's image of its Bell state is (1 − p)F + p/4 (the depolarised
    part I/4 has overlap ¼ with any Bell state)."""
    p2 = 0.2
    core = two_node_core(NodeParams(gate_error_2q=p2))
    q1, q2 = core.allocate(A, 2, 0)
    core.engine.set_state((q1, q2), werner(0.9, PHI_PLUS))
    f = core.oracle_pair_fidelity(q1, q2, 0, 0)
    assert abs(f - 0.9) < EXACT
    # SWAP maps Φ+ to itself; CZ maps Φ+ to Φ− (index 2).
    for gate, index in ((GateName.SWAP, 0), (GateName.SWAP, 0), (GateName.CZ, 2)):
        core.apply_gate(A, gate, [q1, q2], 0.0, 0)
        got = core.oracle_pair_fidelity(q1, q2, index, 0)
        assert abs(got - ((1 - p2) * f + p2 / 4)) < EXACT
        f = got


def test_one_qubit_gate_error_on_one_half() -> None:
    """One-qubit depolarising on one half: (1−p)ρ + p·I/2 ⊗ ρ_B, and ⟨Φ|I/2 ⊗ σ|Φ⟩ = ¼ for any
    σ, so again F → (1 − p)F + p/4, measured against the gate's image of the Bell state."""
    p1 = 0.15
    core = two_node_core(NodeParams(gate_error_1q=p1))
    qa, qb = shared_pair(core, werner(0.95, PHI_PLUS))
    f = 0.95
    # X on Bob's half: Φ+ → Ψ+ (1); Z on Alice's half of Ψ+ gives −Ψ− (3).
    for node, q, gate, index in ((B, qb, GateName.X, 1), (A, qa, GateName.Z, 3)):
        core.apply_gate(node, gate, [q], 0.0, 0)
        got = core.oracle_pair_fidelity(qa, qb, index, 0)
        assert abs(got - ((1 - p1) * f + p1 / 4)) < EXACT
        f = got


@pytest.mark.parametrize(
    ("prepare", "basis", "ideal"),
    [
        ([], Basis.Z, 0),
        ([GateName.X], Basis.Z, 1),
        ([GateName.H], Basis.X, 0),
        ([GateName.H, GateName.S], Basis.Y, 0),
    ],
)
def test_measurement_error_flips_outcomes(
    prepare: list[GateName], basis: Basis, ideal: int
) -> None:
    """On an eigenstate the ideal outcome is certain, so each outcome differs from it with the
    configured probability e: a binomial proportion, bounded by 5 standard errors."""
    error = 0.12
    core = two_node_core(NodeParams(measure_error=error), seed=17)
    trials = 4000
    flips = 0
    for _ in range(trials):
        (q,) = core.allocate(A, 1, 0)
        for gate in prepare:
            core.apply_gate(A, gate, [q], 0.0, 0)
        flips += core.measure(A, q, basis, 0) != ideal
    assert core.memory_in_use(A) == 0
    assert abs(flips / trials - error) <= binomial_bound(error, trials)


def test_no_measurement_error_means_certain_outcomes() -> None:
    core = two_node_core(NodeParams(), seed=2)
    for _ in range(200):
        (q,) = core.allocate(A, 1, 0)
        core.apply_gate(A, GateName.X, [q], 0.0, 0)
        assert core.measure(A, q, Basis.Z, 0) == 1


def test_depolarising_alone_leaves_no_extra_coherence_factor() -> None:
    """Without T1 or T2 the joint solution's coherence factor is exactly 1, and the engine's
    shortcut for that case matches the general single-qubit noise map."""
    params = NodeParams(memory_depolar_rate_hz=40.0)
    for idle_s in (1e-6, 0.003, 0.5, 50.0):
        damping, coherence, depolar = memory_noise(params, idle_s)
        assert (damping, coherence) == (0.0, 1.0)
        assert depolar == pytest.approx(1 - math.exp(-40.0 * idle_s), abs=1e-15)
    for size in (1, 2, 3):
        for position in range(size):
            rho = random_density_matrix(np.random.default_rng(size * 10 + position), size)
            qubits = list(range(1, size + 1))
            fast, general = StateEngine(random.Random(0)), StateEngine(random.Random(0))
            fast.set_state(qubits, rho)
            general.set_state(qubits, rho)
            fast.single_qubit_noise(qubits[position], depolar=0.3)
            # Just below 1: the general path, and the difference it makes is that small.
            general.single_qubit_noise(qubits[position], depolar=0.3, coherence=1 - 1e-13)
            assert np.allclose(fast.reduced(qubits), general.reduced(qubits), atol=1e-12)
