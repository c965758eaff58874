"""Bell-pair correlations and CHSH values measured through ChannelCore, against theory.

Pairs are either prepared on one node (H then CNOT: gates act on one node's qubits only) or
heralded between two nodes and corrected to Φ+ by Bob with the Pauli the Bell index names:
index x + 2z is (I ⊗ X^x Z^z)|Φ+⟩, and (X^x Z^z)^(−1) = Z^z X^x, so Bob applies X^x first,
then Z^z (Ψ+: X; Ψ−: X then Z).

Every statistical bound is Z_SCORE standard errors of the estimate, the errors computed either
from theory or, for CHSH, from the sample itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from qnet.physical.channel_core import ChannelCore
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import Basis, GateName, gate_matrix
from qnet.physical.params import LinkParams, NodeParams, Scheme
from tests.unit.physics_reference import (
    BELL_KETS,
    EIGENKETS,
    PAULI_X,
    PAULI_Y,
    PAULI_Z,
    PHI_PLUS,
    Z_SCORE,
    A,
    B,
    Matrix,
    binomial_bound,
    expectation,
    full_operator,
    kron,
    partial_trace,
    projector,
    run_until_idle,
    two_node_core,
)

EXACT = 1e-9
BASIS_OF = {"X": Basis.X, "Y": Basis.Y, "Z": Basis.Z}
PAULI_OF = {"X": PAULI_X, "Y": PAULI_Y, "Z": PAULI_Z}
#: Φ+ = (II + XX − YY + ZZ)/4: the correlations ⟨σ_b ⊗ σ_b⟩.
PHI_PLUS_CORRELATION = {"Z": 1, "X": 1, "Y": -1}


def test_phi_plus_correlations_of_the_reference_state() -> None:
    rho = projector(PHI_PLUS)
    for b, value in PHI_PLUS_CORRELATION.items():
        assert abs(expectation(rho, kron(PAULI_OF[b], PAULI_OF[b])) - value) < EXACT


# -- pairs prepared on one node ------------------------------------------------------------


@pytest.mark.parametrize("basis", ["Z", "X", "Y"])
def test_locally_prepared_phi_plus_correlations(basis: str) -> None:
    """Noiseless Φ+: every product of outcomes is exactly the correlation (zero variance, so
    zero slack), while each single outcome is a fair coin (binomial bound): correlated, not a
    product state."""
    core = two_node_core(NodeParams(memory_qubits=2), seed=41)
    trials = 2000
    firsts = 0
    for _ in range(trials):
        q1, q2 = core.allocate(A, 2, 0)
        core.apply_gate(A, GateName.H, [q1], 0.0, 0)
        core.apply_gate(A, GateName.CNOT, [q1, q2], 0.0, 0)
        assert abs(core.oracle_pair_fidelity(q1, q2, 0, 0) - 1) < EXACT
        m1 = core.measure(A, q1, BASIS_OF[basis], 0)
        m2 = core.measure(A, q2, BASIS_OF[basis], 0)
        assert (-1) ** (m1 + m2) == PHI_PLUS_CORRELATION[basis]
        firsts += m1
    assert abs(firsts / trials - 0.5) <= binomial_bound(0.5, trials)


# -- heralded pairs between two nodes ------------------------------------------------------


def correct_to_phi_plus(core: ChannelCore, event: HeraldEvent, now: int) -> None:
    """Bob's local correction: undo X^x Z^z on his half (X^x first, then Z^z)."""
    x, z = event.bell_index & 1, event.bell_index >> 1
    if x:
        core.apply_gate(event.node, GateName.X, [event.qubit], 0.0, now)
    if z:
        core.apply_gate(event.node, GateName.Z, [event.qubit], 0.0, now)


def heralded_pairs(core: ChannelCore, count: int) -> Iterator[tuple[int, int, int]]:
    """Arm ``count`` qubits per end; yield (alice's qubit, bob's qubit, now) for each pair,
    already corrected to Φ+ by Bob."""
    qa = core.allocate(A, count, core.now)
    qb = core.allocate(B, count, core.now)
    core.start_generation(A, B, qa, core.now)
    core.start_generation(B, A, qb, core.now)
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
        ea, eb = sorted(core.pop_events(), key=lambda e: e.node)
        assert ea.bell_index in (1, 3)
        correct_to_phi_plus(core, eb, deadline)
        yield ea.qubit, eb.qubit, deadline


def test_heralded_pairs_corrected_by_bell_index_are_phi_plus() -> None:
    link = LinkParams(length_km=5.0, scheme=Scheme.DOUBLE_CLICK)
    core = two_node_core(NodeParams(memory_qubits=3000), link, seed=8)
    trials = dict.fromkeys("ZXY", 0)
    for k, (qa, qb, now) in enumerate(heralded_pairs(core, 3000)):
        assert abs(core.oracle_pair_fidelity(qa, qb, 0, now) - 1) < EXACT
        b = "ZXY"[k % 3]
        ma = core.measure(A, qa, BASIS_OF[b], now)
        mb = core.measure(B, qb, BASIS_OF[b], now)
        assert (-1) ** (ma + mb) == PHI_PLUS_CORRELATION[b]
        trials[b] += 1
    assert trials == {"Z": 1000, "X": 1000, "Y": 1000}


def test_single_click_corrected_correlations_match_the_model() -> None:
    """Single-click pairs are w|Ψ±⟩⟨Ψ±| + (1 − w)|11⟩⟨11| (then source noise); corrected they
    are no longer ideal. Each correlation E_b of the corrected model state is estimated from n
    products of ±1, standard error √((1 − E_b²)/n)."""
    link = LinkParams(length_km=5.0, bright_state=0.3, source_fidelity=0.98)
    core = two_node_core(NodeParams(memory_qubits=9000), link, seed=19)
    model = core.link_theory(A, B)
    # Bob's correction for Ψ+ is X: the corrected state is (I⊗X) ρ_1 (I⊗X).
    ix = kron(np.eye(2), PAULI_X)
    corrected = ix @ model.states[1] @ ix
    ixz = kron(np.eye(2), PAULI_Z @ PAULI_X)
    assert np.allclose(ixz @ model.states[3] @ ixz.conj().T, corrected)
    products: dict[str, list[int]] = {b: [] for b in "ZXY"}
    for k, (qa, qb, now) in enumerate(heralded_pairs(core, 9000)):
        b = "ZXY"[k % 3]
        ma = core.measure(A, qa, BASIS_OF[b], now)
        mb = core.measure(B, qb, BASIS_OF[b], now)
        products[b].append((-1) ** (ma + mb))
    for b, values in products.items():
        e_b = expectation(corrected, kron(PAULI_OF[b], PAULI_OF[b]))
        n = len(values)
        assert abs(float(np.mean(values)) - e_b) <= Z_SCORE * math.sqrt((1 - e_b**2) / n)


# -- CHSH ----------------------------------------------------------------------------------

#: Alice measures along a ∈ {0, π/2} (Z or X); Bob along b ∈ {π/4, −π/4} in the XZ plane,
#: by RY(−b) then Z (RY(−b) maps σ_b = cos b·Z + sin b·X to Z). For Φ+ (XX = ZZ = 1, XZ = 0)
#: E(a, b) = cos(a − b), and S = E(a,b) + E(a,b') + E(a',b) − E(a',b') = 2√2.
ALICE = {"a": Basis.Z, "a'": Basis.X}
BOB = {"b": math.pi / 4, "b'": -math.pi / 4}
SETTINGS = [("a", "b", 1), ("a", "b'", 1), ("a'", "b", 1), ("a'", "b'", -1)]


def chsh(core: ChannelCore, per_setting: int) -> tuple[float, float]:
    """CHSH value from heralded pairs and its standard error from the sample:
    Var(S) = Σ_settings (1 − Ê²)/n."""
    products: dict[int, list[int]] = {i: [] for i in range(len(SETTINGS))}
    pairs = per_setting * len(SETTINGS)
    for k, (qa, qb, now) in enumerate(heralded_pairs(core, pairs)):
        i = k % len(SETTINGS)
        alice, bob, _ = SETTINGS[i]
        core.apply_gate(B, GateName.RY, [qb], -BOB[bob], now)
        ma = core.measure(A, qa, ALICE[alice], now)
        mb = core.measure(B, qb, Basis.Z, now)
        products[i].append((-1) ** (ma + mb))
    estimates = [float(np.mean(products[i])) for i in range(len(SETTINGS))]
    s = sum(sign * e for (_, _, sign), e in zip(SETTINGS, estimates, strict=True))
    variance = sum((1 - e**2) / len(products[i]) for i, e in enumerate(estimates))
    return s, math.sqrt(variance)


def test_chsh_of_noiseless_pairs_reaches_tsirelson() -> None:
    link = LinkParams(length_km=1.0, scheme=Scheme.DOUBLE_CLICK)
    core = two_node_core(NodeParams(memory_qubits=12_000), link, seed=23)
    s, se = chsh(core, 3000)
    assert abs(s - 2 * math.sqrt(2)) <= Z_SCORE * se
    assert s - 2 > Z_SCORE * se  # a violation of the classical bound, not a fluke
    assert core.qubits_in_use == 0


@pytest.mark.parametrize("fidelity", [0.95, 0.8])
def test_chsh_of_werner_pairs(fidelity: float) -> None:
    """A Werner pair is λ|Φ+⟩⟨Φ+| + (1 − λ)I/4, λ = (4F − 1)/3; white noise has no correlations,
    so every E scales by λ and S = 2√2·(4F − 1)/3. Double-click heralding with source fidelity
    F makes exactly such pairs (the Pauli correction commutes with the white noise)."""
    link = LinkParams(length_km=1.0, scheme=Scheme.DOUBLE_CLICK, source_fidelity=fidelity)
    core = two_node_core(NodeParams(memory_qubits=12_000), link, seed=29)
    assert abs(core.link_theory(A, B).fidelity() - fidelity) < EXACT
    s, se = chsh(core, 3000)
    assert abs(s - 2 * math.sqrt(2) * (4 * fidelity - 1) / 3) <= Z_SCORE * se


# -- Bell measurement and entanglement swapping --------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_bell_measurement_identifies_each_bell_state(index: int) -> None:
    """bell_measure returns x + 2z for (I ⊗ X^x Z^z)|Φ+⟩, deterministically."""
    core = two_node_core(seed=index)
    for _ in range(20):
        q1, q2 = core.allocate(A, 2, 0)
        core.apply_gate(A, GateName.H, [q1], 0.0, 0)
        core.apply_gate(A, GateName.CNOT, [q1, q2], 0.0, 0)
        if index >> 1:
            core.apply_gate(A, GateName.Z, [q2], 0.0, 0)
        if index & 1:
            core.apply_gate(A, GateName.X, [q2], 0.0, 0)
        assert abs(core.oracle_pair_fidelity(q1, q2, index, 0) - 1) < EXACT
        assert core.bell_measure(A, q1, q2, 0) == index
        assert core.memory_in_use(A) == 0


def swap_reference(i1: int, i2: int, m: int) -> Matrix:
    """(a, c) after a Bell measurement with outcome m on (b1, b2) of |β_i1⟩_{a b1}|β_i2⟩_{b2 c}:
    full 4-qubit matrices, CNOT(b1→b2), H(b1), project b1 = m >> 1 and b2 = m & 1."""
    ket = kron(BELL_KETS[i1], BELL_KETS[i2])
    ket = full_operator(gate_matrix(GateName.CNOT), (1, 2), 4) @ ket
    ket = full_operator(gate_matrix(GateName.H), (1,), 4) @ ket
    bits = (m >> 1, m & 1)
    proj = full_operator(
        kron(projector(EIGENKETS["Z"][bits[0]]), projector(EIGENKETS["Z"][bits[1]])),
        (1, 2),
        4,
    )
    rho = proj @ projector(ket) @ proj
    out = partial_trace(rho, [0, 3], 4)
    result: Matrix = out / np.trace(out)
    return result


def test_swap_pauli_frame_rule_against_the_reference() -> None:
    """Swapping β_i1 and β_i2 with Bell outcome m leaves β_(i1 ⊕ i2 ⊕ m) (bitwise on x and z),
    checked for all 64 cases with full matrices."""
    for i1 in range(4):
        for i2 in range(4):
            for m in range(4):
                rho = swap_reference(i1, i2, m)
                assert abs(expectation(rho, projector(BELL_KETS[i1 ^ i2 ^ m])) - 1) < EXACT


def test_entanglement_swap_of_werner_pairs() -> None:
    """DESIGN §5: swapping Werner pairs of fidelities F1 and F2 gives F1F2 + (1−F1)(1−F2)/3
    (λ_out = λ1λ2 with λ = (4F − 1)/3), for every Bell outcome."""
    f1, f2 = 0.93, 0.81
    core = ChannelCore(seed=31)
    for name in (A, B, "carol"):
        core.register_node(name, NodeParams(memory_qubits=2), 0)
    core.declare_link(A, B, LinkParams(scheme=Scheme.DOUBLE_CLICK, source_fidelity=f1), 0)
    core.declare_link(B, "carol", LinkParams(scheme=Scheme.DOUBLE_CLICK, source_fidelity=f2), 0)
    expected = f1 * f2 + (1 - f1) * (1 - f2) / 3
    outcomes = set()
    for _ in range(60):
        (qa,) = core.allocate(A, 1, core.now)
        qb1, qb2 = core.allocate(B, 2, core.now)
        (qc,) = core.allocate("carol", 1, core.now)
        core.start_generation(A, B, [qa], core.now)
        core.start_generation(B, A, [qb1], core.now)
        core.start_generation(B, "carol", [qb2], core.now)
        core.start_generation("carol", B, [qc], core.now)
        run_until_idle(core)
        events = {(e.node, e.peer): e for e in core.pop_events()}
        i1 = events[(A, B)].bell_index
        i2 = events[(B, "carol")].bell_index
        m = core.bell_measure(B, qb1, qb2, core.now)
        outcomes.add(m)
        got = core.oracle_pair_fidelity(qa, qc, i1 ^ i2 ^ m, core.now)
        assert abs(got - expected) < EXACT
        core.free(A, [qa], core.now)
        core.free("carol", [qc], core.now)
    assert outcomes == {0, 1, 2, 3}
