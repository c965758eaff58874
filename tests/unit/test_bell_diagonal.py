"""The network layer's pair predictions against exact density-matrix computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.link import estimate
from qnet.network import bell_diagonal as bd
from qnet.physical.gates import BELL_PROJECTORS, CNOT, GateName, gate_matrix
from qnet.physical.params import NodeParams
from qnet.physical.state import conjugate, depolarized

probability = st.floats(0.0, 0.2)
weights = st.lists(st.floats(0.01, 1.0), min_size=4, max_size=4).map(
    lambda w: tuple(x / sum(w) for x in w)
)


def bell_diagonal_state(q: tuple[float, ...], nominal: int) -> np.ndarray:
    """Σ q[e] |B_{nominal⊕e}⟩⟨B_{nominal⊕e}|."""
    rho = sum(q[e] * BELL_PROJECTORS[nominal ^ e] for e in range(4))
    return np.asarray(rho, dtype=complex)


def measure_project(rho: np.ndarray, qubit: int, outcome: int, n: int) -> np.ndarray:
    proj = np.zeros((2, 2), dtype=complex)
    proj[outcome, outcome] = 1.0
    return conjugate(rho, proj, (qubit,), n)


def partial_trace_middle(rho: np.ndarray) -> np.ndarray:
    """Trace out qubits 1 and 2 of a 4-qubit state, keeping (0, 3)."""
    t = rho.reshape((2,) * 8)
    out: np.ndarray = np.einsum("abcdebcf->adef", t).reshape(4, 4)
    return out


@settings(max_examples=40, deadline=None)
@given(st.floats(0.25, 1.0), st.floats(0.25, 1.0))
def test_swap_of_werner_pairs_is_the_werner_swap_formula(f1: float, f2: float) -> None:
    joined = bd.convolve(bd.werner(f1), bd.werner(f2))
    assert math.isclose(bd.fidelity(joined), f1 * f2 + (1 - f1) * (1 - f2) / 3, abs_tol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    weights,
    weights,
    st.integers(0, 3),
    st.integers(0, 3),
    probability,
    probability,
    probability,
)
def test_bell_measurement_matches_the_exact_swap(
    q1: tuple[float, ...],
    q2: tuple[float, ...],
    n1: int,
    n2: int,
    p1: float,
    p2: float,
    e: float,
) -> None:
    """Qubits (a, b) and (c, d); the node swaps b, c with noisy gates and measurements, the
    frame is n1 ⊕ n2 ⊕ m, and the corrected (a, d) pair's Bell weights, averaged over the
    outcomes, equal the prediction."""
    params = NodeParams(gate_error_1q=p1, gate_error_2q=p2, measure_error=e)
    rho = np.kron(bell_diagonal_state(q1, n1), bell_diagonal_state(q2, n2))
    rho = conjugate(rho, CNOT, (1, 2), 4)
    rho = depolarized(rho, (1, 2), p2, 4)
    rho = conjugate(rho, gate_matrix(GateName.H), (1,), 4)
    rho = depolarized(rho, (1,), p1, 4)
    expected = np.zeros(4)
    for mz, mx in itertools.product((0, 1), repeat=2):
        branch = measure_project(measure_project(rho, 1, mz, 4), 2, mx, 4)
        pair = partial_trace_middle(branch)
        for rz, rx in itertools.product((0, 1), repeat=2):
            # Each reported bit is wrong with probability e.
            p_report = (e if rz != mz else 1 - e) * (e if rx != mx else 1 - e)
            frame = n1 ^ n2 ^ (rx + 2 * rz)
            for err in range(4):
                expected[err] += p_report * float(
                    np.real(np.trace(BELL_PROJECTORS[frame ^ err] @ pair))
                )
    predicted = bd.bell_measurement(bd.relative(q1, 0), bd.relative(q2, 0), params)
    assert np.allclose(predicted, expected, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    weights,
    st.integers(0, 3),
    st.sampled_from([0.0, 0.05, 0.4]),
    st.sampled_from([0.0, 0.02, 0.1]),
    st.sampled_from([0.0, 0.5, 3.0]),
    st.integers(1, 50_000_000),
)
def test_memory_idle_matches_the_backend_model_on_bell_diagonal_pairs(
    q: tuple[float, ...], nominal: int, t1: float, t2: float, depol: float, t_ns: int
) -> None:
    """Bell weights after T1/T2/depolarising memory on one half equal the exact channel's
    (the twirl loses nothing on Bell-diagonal states)."""
    if t1 and t2 > 2 * t1:
        t2 = 2 * t1
    params = NodeParams(t1_s=t1, t2_s=t2, memory_depolar_rate_hz=depol)
    exact = estimate.decay(bell_diagonal_state(q, nominal), 1, params, t_ns)
    expected = bd.relative(estimate.bell_coefficients(exact), nominal)
    predicted = bd.idle(bd.relative(tuple(q[nominal ^ i] for i in range(4)), nominal), params, t_ns)
    # relative() of absolute weights built from q (absolute index nominal ⊕ e holds q[e]).
    assert np.allclose(predicted, expected, atol=1e-9)


def test_idle_factor_is_the_werner_decay_for_depolarising_memory() -> None:
    params = NodeParams(memory_depolar_rate_hz=10.0)
    t_ns = 30_000_000
    f = bd.fidelity(bd.idle(bd.werner(0.9), params, t_ns))
    assert math.isclose(f, estimate.werner_fidelity(0.9, 10.0, t_ns), abs_tol=1e-12)


def test_relative_reindexes_and_normalises() -> None:
    assert bd.relative((0.1, 0.2, 0.3, 0.4), 3) == (0.4, 0.3, 0.2, 0.1)
    assert bd.relative((2.0, 0.0, 0.0, 2.0), 0) == (0.5, 0.0, 0.0, 0.5)
