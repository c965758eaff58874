"""The StateEngine against explicit full-matrix linear algebra, and its measurements against the
Born rule, statistically.

The reference (tests/unit/physics_reference.py) builds every gate's full 2^n matrix with np.kron
and explicit permutation matrices, so it shares no code with the engine's tensor contractions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.errors import GroupTooLarge, InvalidArgument, NotFound
from qnet.physical.gates import GATES, Basis, GateName, gate_matrix
from qnet.physical.state import StateEngine
from tests.unit.physics_reference import (
    EIGENKETS,
    PHI_PLUS,
    Matrix,
    amplitude_damping_kraus,
    apply_kraus,
    assert_physical,
    binomial_bound,
    dephasing_kraus,
    depolarize_reference,
    depolarizing_kraus,
    full_operator,
    kron,
    kron_all,
    partial_trace,
    projector,
    random_density_matrix,
    reorder,
)

ATOL = 1e-10

# -- random circuits -----------------------------------------------------------------------


@dataclass(frozen=True)
class GateOp:
    gate: GateName
    angle: float
    targets: tuple[int, ...]  # qubit positions 0 … n−1 (not engine ids)


@dataclass(frozen=True)
class DepolarOp:
    p: float
    targets: tuple[int, ...]


@dataclass(frozen=True)
class NoiseOp:
    damping: float
    coherence: float
    depolar: float
    target: int


Op = GateOp | DepolarOp | NoiseOp


@dataclass(frozen=True)
class Circuit:
    n: int
    seed: int
    group_label: tuple[int, ...]  # qubit position → initial group
    member_order: tuple[int, ...]  # order of qubits inside their groups
    ops: tuple[Op, ...]
    probe: tuple[int, ...]  # a subset of positions, in some order, to read back at the end


ONE_QUBIT = [g for g, spec in GATES.items() if spec.arity == 1]
TWO_QUBIT = [g for g, spec in GATES.items() if spec.arity == 2]
ANGLES = st.floats(-4 * np.pi, 4 * np.pi, allow_nan=False, allow_infinity=False)
UNIT = st.floats(0.0, 1.0, allow_nan=False)


def ordered_pairs(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Distinct ordered pairs of positions: reversed orders and non-adjacent qubits included."""
    return st.permutations(range(n)).map(lambda p: (p[0], p[1]))


def ops_for(n: int) -> st.SearchStrategy[Op]:
    single = st.integers(0, n - 1).map(lambda q: (q,))
    choices: list[st.SearchStrategy[Op]] = [
        st.builds(GateOp, st.sampled_from(ONE_QUBIT), ANGLES, single),
        st.builds(DepolarOp, UNIT, single),
        st.builds(NoiseOp, UNIT, UNIT, UNIT, st.integers(0, n - 1)),
    ]
    if n >= 2:
        choices.append(st.builds(GateOp, st.sampled_from(TWO_QUBIT), ANGLES, ordered_pairs(n)))
        choices.append(st.builds(DepolarOp, UNIT, ordered_pairs(n)))
    return st.one_of(choices)


@st.composite
def circuits(draw: st.DrawFn) -> Circuit:
    n = draw(st.integers(1, 4))
    probe_size = draw(st.integers(1, n))
    return Circuit(
        n=n,
        seed=draw(st.integers(0, 2**32 - 1)),
        group_label=tuple(draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))),
        member_order=tuple(draw(st.permutations(range(n)))),
        ops=tuple(draw(st.lists(ops_for(n), max_size=14))),
        probe=tuple(draw(st.permutations(range(n)))[:probe_size]),
    )


def engine_ids(n: int) -> list[int]:
    """Engine ids deliberately not in position order."""
    return [40 - 7 * i for i in range(n)]


@given(circuits())
@settings(max_examples=250, deadline=None, derandomize=True)
def test_engine_matches_full_matrix_reference(circuit: Circuit) -> None:
    n = circuit.n
    rng = np.random.default_rng(circuit.seed)
    ids = engine_ids(n)
    engine = StateEngine(random.Random(0), max_group_qubits=n + 1)

    # Initial state: a product of random mixed states over the drawn groups.
    group_states: list[Matrix] = []
    sequence: list[int] = []  # positions in the order of the kron product of the groups
    for label in sorted(set(circuit.group_label)):
        members = [q for q in circuit.member_order if circuit.group_label[q] == label]
        rho_g = random_density_matrix(rng, len(members))
        engine.set_state([ids[q] for q in members], rho_g)
        group_states.append(rho_g)
        sequence.extend(members)
    reference = reorder(kron_all(group_states), [sequence.index(q) for q in range(n)])
    np.testing.assert_allclose(engine.reduced(ids), reference, atol=ATOL, rtol=0)

    for op in circuit.ops:
        if isinstance(op, GateOp):
            u = gate_matrix(op.gate, op.angle)
            engine.apply(u, [ids[q] for q in op.targets])
            full = full_operator(u, op.targets, n)
            reference = full @ reference @ full.conj().T
        elif isinstance(op, DepolarOp):
            engine.depolarize([ids[q] for q in op.targets], op.p)
            reference = depolarize_reference(reference, op.targets, op.p, n)
        else:
            engine.single_qubit_noise(
                ids[op.target], damping=op.damping, coherence=op.coherence, depolar=op.depolar
            )
            reference = apply_kraus(reference, amplitude_damping_kraus(op.damping), [op.target], n)
            reference = apply_kraus(reference, dephasing_kraus(op.coherence), [op.target], n)
            reference = apply_kraus(reference, depolarizing_kraus(op.depolar), [op.target], n)

    got = engine.reduced(ids)
    np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0)
    assert_physical(got)
    # Any subset, in any order, is the partial trace of the reference.
    sub = engine.reduced([ids[q] for q in circuit.probe])
    np.testing.assert_allclose(sub, partial_trace(reference, circuit.probe, n), atol=ATOL, rtol=0)
    assert_physical(sub)


def test_reference_conventions() -> None:
    """Pin the reference itself: CNOT's first qubit controls, position 0 is the leftmost
    factor, and a reversed CNOT is H⊗H · CNOT · H⊗H."""
    cnot = gate_matrix(GateName.CNOT)
    ket10 = np.zeros(4, dtype=np.complex128)
    ket10[2] = 1
    assert np.allclose(full_operator(cnot, (0, 1), 2) @ ket10, np.eye(4)[3])
    assert np.allclose(full_operator(cnot, (1, 0), 2) @ ket10, ket10)
    hh = kron(gate_matrix(GateName.H), gate_matrix(GateName.H))
    assert np.allclose(full_operator(cnot, (1, 0), 2), hh @ cnot @ hh)
    x = gate_matrix(GateName.X)
    eye2 = np.eye(2)
    assert np.allclose(full_operator(x, (1,), 3), kron(kron(eye2, x), eye2))


# -- measurement ---------------------------------------------------------------------------

BASES = {"Z": Basis.Z, "X": Basis.X, "Y": Basis.Y}


def marginal_probability(rho: Matrix, pos: int, n: int, ket: Matrix) -> float:
    return float(np.real(np.trace(full_operator(projector(ket), (pos,), n) @ rho)))


def conditional_rest(rho: Matrix, pos: int, n: int, ket: Matrix) -> Matrix:
    """State of the other qubits after outcome ``ket`` on qubit ``pos``: Tr_pos[Πρ]/p."""
    proj = full_operator(projector(ket), (pos,), n)
    unnormalised = partial_trace(proj @ rho @ proj, [q for q in range(n) if q != pos], n)
    out: Matrix = unnormalised / np.real(np.trace(unnormalised))
    return out


@pytest.mark.parametrize("basis", ["Z", "X", "Y"])
@pytest.mark.parametrize(("n", "pos"), [(1, 0), (3, 0), (3, 1), (3, 2)])
def test_measurement_probabilities_follow_born_rule(basis: str, n: int, pos: int) -> None:
    rho = random_density_matrix(np.random.default_rng(1000 * n + pos), n)
    p0 = marginal_probability(rho, pos, n, EIGENKETS[basis][0])
    assert 0.05 < p0 < 0.95  # the fixed state is not (nearly) an eigenstate: the test has power
    ids = engine_ids(n)
    engine = StateEngine(random.Random(7 + n + pos))
    trials = 3000
    zeros = 0
    for _ in range(trials):
        engine.set_state(ids, rho)
        zeros += engine.measure(ids[pos], BASES[basis]) == 0
        assert ids[pos] not in engine
    assert abs(zeros / trials - p0) <= binomial_bound(p0, trials)


@pytest.mark.parametrize("basis", ["Z", "X", "Y"])
@pytest.mark.parametrize("pos", [0, 1, 2])
def test_collapse_leaves_the_conditional_state_of_the_rest(basis: str, pos: int) -> None:
    n = 3
    rho = random_density_matrix(np.random.default_rng(77 + pos), n)
    ids = engine_ids(n)
    rest = [ids[q] for q in range(n) if q != pos]
    engine = StateEngine(random.Random(pos))
    seen = set()
    for _ in range(30):
        engine.set_state(ids, rho)
        outcome = engine.measure(ids[pos], BASES[basis])
        seen.add(outcome)
        expected = conditional_rest(rho, pos, n, EIGENKETS[basis][outcome])
        got = engine.reduced(rest)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
        assert_physical(got)
        assert engine.group_of(rest[0]).size == 2
    assert seen == {0, 1}  # both branches were exercised


@pytest.mark.parametrize(("basis", "flip"), [("Z", 0), ("X", 0), ("Y", 1)])
def test_measuring_half_a_bell_pair_projects_the_other_half(basis: str, flip: int) -> None:
    """Φ+ has ZZ = XX = +1 and YY = −1: the other half ends in the same (Z, X) or the opposite
    (Y) eigenstate."""
    engine = StateEngine(random.Random(3))
    seen = set()
    for _ in range(20):
        engine.set_state([5, 2], projector(PHI_PLUS))
        m = engine.measure(5, BASES[basis])
        seen.add(m)
        other = projector(EIGENKETS[basis][m ^ flip])
        np.testing.assert_allclose(engine.reduced([2]), other, atol=ATOL, rtol=0)
    assert seen == {0, 1}


@pytest.mark.parametrize("basis", ["Z", "X", "Y"])
def test_measure_keep_leaves_the_eigenstate(basis: str) -> None:
    n = 3
    rho = random_density_matrix(np.random.default_rng(5), n)
    ids = engine_ids(n)
    engine = StateEngine(random.Random(11))
    seen = set()
    for _ in range(20):
        engine.set_state(ids, rho)
        m = engine.measure(ids[1], BASES[basis], keep=True)
        seen.add(m)
        assert ids[1] in engine
        assert engine.group_of(ids[1]).size == 1
        eigen = projector(EIGENKETS[basis][m])
        np.testing.assert_allclose(engine.reduced([ids[1]]), eigen, atol=ATOL, rtol=0)
        rest = conditional_rest(rho, 1, n, EIGENKETS[basis][m])
        np.testing.assert_allclose(
            engine.reduced(ids), reorder(kron(eigen, rest), [1, 0, 2]), atol=ATOL, rtol=0
        )
        # Repeating the measurement in the same basis gives the same outcome.
        assert engine.measure(ids[1], BASES[basis], keep=True) == m
    assert seen == {0, 1}


@pytest.mark.parametrize("pos", [0, 1, 2, 3])
def test_discard_is_the_partial_trace(pos: int) -> None:
    n = 4
    rho = random_density_matrix(np.random.default_rng(9), n)
    ids = engine_ids(n)
    engine = StateEngine(random.Random(0))
    engine.set_state(ids, rho)
    engine.discard(ids[pos])
    keep = [q for q in range(n) if q != pos]
    np.testing.assert_allclose(
        engine.reduced([ids[q] for q in keep]), partial_trace(rho, keep, n), atol=ATOL, rtol=0
    )
    assert ids[pos] not in engine
    with pytest.raises(NotFound):
        engine.reduced([ids[pos]])
    assert engine.group_of(ids[keep[0]]).size == n - 1


def test_discard_of_a_lone_qubit_forgets_it() -> None:
    engine = StateEngine(random.Random(0))
    engine.new_qubit(1)
    engine.discard(1)
    assert 1 not in engine
    assert len(engine) == 0


def test_merge_over_the_limit_raises_and_leaves_the_state_unchanged() -> None:
    engine = StateEngine(random.Random(0), max_group_qubits=3)
    rng = np.random.default_rng(4)
    engine.set_state([1, 2], random_density_matrix(rng, 2))
    engine.set_state([3, 4], random_density_matrix(rng, 2))
    before = engine.reduced([1, 2, 3, 4])
    for attempt in (
        lambda: engine.apply(gate_matrix(GateName.CNOT), [2, 3]),
        lambda: engine.depolarize([4, 1], 0.3),
        lambda: engine.merge([1, 3]),
    ):
        with pytest.raises(GroupTooLarge):
            attempt()
        np.testing.assert_array_equal(engine.reduced([1, 2, 3, 4]), before)
        assert engine.group_of(1).qubits == [1, 2]
        assert engine.group_of(3).qubits == [3, 4]
    # At the limit exactly it works.
    engine.new_qubit(5)
    engine.apply(gate_matrix(GateName.CZ), [5, 1])
    assert engine.group_of(1).size == 3


def test_apply_rejects_repeated_qubits() -> None:
    engine = StateEngine(random.Random(0))
    engine.new_qubit(1)
    with pytest.raises(InvalidArgument):
        engine.apply(gate_matrix(GateName.CNOT), [1, 1])


def test_engine_rejects_a_group_limit_below_two() -> None:
    with pytest.raises(InvalidArgument):
        StateEngine(random.Random(0), max_group_qubits=1)


@pytest.mark.parametrize("targets", [(0,), (2,), (0, 1), (1, 0), (0, 2), (2, 0), (1, 2)])
@pytest.mark.parametrize("p", [0.0, 0.37, 1.0])
def test_depolarize_matches_the_explicit_channel(targets: tuple[int, ...], p: float) -> None:
    """ρ → (1−p)ρ + p·I/2^k ⊗ Tr_k ρ, with the partial trace and re-embedding done by hand."""
    n = 3
    rho = random_density_matrix(np.random.default_rng(21), n)
    ids = engine_ids(n)
    engine = StateEngine(random.Random(0))
    engine.set_state(ids, rho)
    engine.depolarize([ids[q] for q in targets], p)
    expected = depolarize_reference(rho, targets, p, n)
    np.testing.assert_allclose(engine.reduced(ids), expected, atol=ATOL, rtol=0)
    if p == 1.0:
        # Fully depolarised targets are maximally mixed and uncorrelated with the rest.
        k = len(targets)
        got = engine.reduced([ids[q] for q in targets])
        np.testing.assert_allclose(got, np.eye(1 << k) / (1 << k), atol=ATOL, rtol=0)


def test_two_qubit_depolarize_across_groups_merges_them() -> None:
    rng = np.random.default_rng(8)
    a, b = random_density_matrix(rng, 1), random_density_matrix(rng, 1)
    engine = StateEngine(random.Random(0))
    engine.set_state([1], a)
    engine.set_state([2], b)
    engine.depolarize([2, 1], 0.5)
    expected = depolarize_reference(kron(a, b), (1, 0), 0.5, 2)
    np.testing.assert_allclose(engine.reduced([1, 2]), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos", [0, 1, 2])
@pytest.mark.parametrize(
    ("damping", "coherence", "depolar"),
    [(0.3, 1.0, 0.0), (0.0, 0.4, 0.0), (0.0, 1.0, 0.6), (1.0, 1.0, 0.0), (0.2, 0.7, 0.1)],
)
def test_single_qubit_noise_equals_the_kraus_sums(
    pos: int, damping: float, coherence: float, depolar: float
) -> None:
    n = 3
    rho = random_density_matrix(np.random.default_rng(31), n)
    ids = engine_ids(n)
    engine = StateEngine(random.Random(0))
    engine.set_state(ids, rho)
    engine.single_qubit_noise(ids[pos], damping=damping, coherence=coherence, depolar=depolar)
    expected = apply_kraus(rho, amplitude_damping_kraus(damping), [pos], n)
    expected = apply_kraus(expected, dephasing_kraus(coherence), [pos], n)
    expected = apply_kraus(expected, depolarizing_kraus(depolar), [pos], n)
    got = engine.reduced(ids)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert_physical(got)


def test_full_damping_sends_the_qubit_to_ground() -> None:
    engine = StateEngine(random.Random(0))
    engine.set_state([1, 2], projector(PHI_PLUS))
    engine.single_qubit_noise(2, damping=1.0)
    expected = kron(np.eye(2) / 2, projector(EIGENKETS["Z"][0]))
    np.testing.assert_allclose(engine.reduced([1, 2]), expected, atol=ATOL, rtol=0)
