"""Reference linear algebra and statistics shared by the physics unit tests.

Everything here is written independently of qnet.physical.state: full 2^n × 2^n matrices built
with np.kron and explicit permutation matrices, partial traces by explicit index loops, noise by
explicit Kraus sums. Statistical bounds are Z_SCORE standard errors of the estimator in question,
so that a correct implementation fails a given check with probability about 6·10^-7.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from qnet.physical.channel_core import ChannelCore
from qnet.physical.params import LinkParams, NodeParams

Matrix = npt.NDArray[np.complex128]

#: Two-sided normal tail beyond 5σ is 5.7·10^-7: the false-failure rate of every statistical check.
Z_SCORE = 5.0

R2 = 1 / math.sqrt(2)
PAULI_I: Matrix = np.eye(2, dtype=np.complex128)
PAULI_X: Matrix = np.array([[0, 1], [1, 0]], dtype=np.complex128)
PAULI_Y: Matrix = np.array([[0, -1j], [1j, 0]], dtype=np.complex128)
PAULI_Z: Matrix = np.array([[1, 0], [0, -1]], dtype=np.complex128)
PAULIS: tuple[Matrix, ...] = (PAULI_I, PAULI_X, PAULI_Y, PAULI_Z)

#: The +1 (outcome 0) and −1 (outcome 1) eigenkets of Z, X and Y, written out by hand.
EIGENKETS: dict[str, tuple[Matrix, Matrix]] = {
    "Z": (np.array([1, 0], dtype=np.complex128), np.array([0, 1], dtype=np.complex128)),
    "X": (np.array([R2, R2], dtype=np.complex128), np.array([R2, -R2], dtype=np.complex128)),
    "Y": (
        np.array([R2, 1j * R2], dtype=np.complex128),
        np.array([R2, -1j * R2], dtype=np.complex128),
    ),
}

#: Bell kets written out by hand: Φ+, Ψ+, Φ−, Ψ− (index x + 2z of (I ⊗ X^x Z^z)|Φ+⟩).
PHI_PLUS: Matrix = np.array([R2, 0, 0, R2], dtype=np.complex128)
PSI_PLUS: Matrix = np.array([0, R2, R2, 0], dtype=np.complex128)
PHI_MINUS: Matrix = np.array([R2, 0, 0, -R2], dtype=np.complex128)
PSI_MINUS: Matrix = np.array([0, R2, -R2, 0], dtype=np.complex128)
BELL_KETS: tuple[Matrix, ...] = (PHI_PLUS, PSI_PLUS, PHI_MINUS, PSI_MINUS)


def projector(ket: Matrix) -> Matrix:
    out: Matrix = np.outer(ket, ket.conj())
    return out


def werner(fidelity: float, ket: Matrix) -> Matrix:
    """F|ψ⟩⟨ψ| + (1−F)/3 (I − |ψ⟩⟨ψ|): the Werner state of fidelity F around ``ket``."""
    proj = projector(ket)
    out: Matrix = fidelity * proj + (1 - fidelity) / 3 * (np.eye(4, dtype=np.complex128) - proj)
    return out


def kron(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Matrix:
    """np.kron, typed as complex128."""
    out: Matrix = np.asarray(np.kron(a, b), dtype=np.complex128)
    return out


def kron_all(ops: Sequence[Matrix]) -> Matrix:
    out: Matrix = np.ones((1, 1), dtype=np.complex128)
    for op in ops:
        out = kron(out, op)
    return out


def permutation_matrix(order: Sequence[int]) -> Matrix:
    """P with P|b_0 … b_{n−1}⟩ = |b_{order[0]} … b_{order[n−1]}⟩ (new qubit j = old qubit
    order[j]), built entry by entry; qubit 0 is the most significant bit."""
    n = len(order)
    dim = 1 << n
    perm: Matrix = np.zeros((dim, dim), dtype=np.complex128)
    for bits in itertools.product((0, 1), repeat=n):
        old = int("".join(map(str, bits)), 2) if n else 0
        new_bits = [bits[order[j]] for j in range(n)]
        new = int("".join(map(str, new_bits)), 2) if n else 0
        perm[new, old] = 1
    return perm


def reorder(rho: Matrix, order: Sequence[int]) -> Matrix:
    """The state ``rho`` with its qubits reordered so that new qubit j is old qubit order[j]."""
    perm = permutation_matrix(order)
    out: Matrix = perm @ rho @ perm.T
    return out


def full_operator(op: Matrix, targets: Sequence[int], n: int) -> Matrix:
    """The 2^n × 2^n matrix of ``op`` acting on qubits ``targets`` (its tensor factor i on qubit
    targets[i]): move the targets to the front, kron with the identity, move them back."""
    k = len(targets)
    order = list(targets) + [q for q in range(n) if q not in targets]
    perm = permutation_matrix(order)
    out: Matrix = perm.T @ np.kron(op, np.eye(1 << (n - k), dtype=np.complex128)) @ perm
    return out


def partial_trace(rho: Matrix, keep: Sequence[int], n: int) -> Matrix:
    """Reduced state of qubits ``keep`` (in that order) by explicit sums over basis indices."""
    traced = [q for q in range(n) if q not in keep]
    k = len(keep)
    out: Matrix = np.zeros((1 << k, 1 << k), dtype=np.complex128)

    def index(kept_bits: Sequence[int], traced_bits: Sequence[int]) -> int:
        bits = [0] * n
        for q, b in zip(keep, kept_bits, strict=True):
            bits[q] = b
        for q, b in zip(traced, traced_bits, strict=True):
            bits[q] = b
        return sum(b << (n - 1 - q) for q, b in enumerate(bits))

    for r in itertools.product((0, 1), repeat=k):
        for c in itertools.product((0, 1), repeat=k):
            ri = sum(b << (k - 1 - j) for j, b in enumerate(r))
            ci = sum(b << (k - 1 - j) for j, b in enumerate(c))
            for t in itertools.product((0, 1), repeat=len(traced)):
                out[ri, ci] += rho[index(r, t), index(c, t)]
    return out


def apply_kraus(rho: Matrix, kraus: Sequence[Matrix], targets: Sequence[int], n: int) -> Matrix:
    """Σ_i K_i ρ K_i† with each K_i embedded on ``targets``."""
    out: Matrix = np.zeros_like(rho)
    for k in kraus:
        full = full_operator(k, targets, n)
        out += full @ rho @ full.conj().T
    return out


def amplitude_damping_kraus(gamma: float) -> list[Matrix]:
    return [
        np.array([[1, 0], [0, math.sqrt(1 - gamma)]], dtype=np.complex128),
        np.array([[0, math.sqrt(gamma)], [0, 0]], dtype=np.complex128),
    ]


def dephasing_kraus(coherence: float) -> list[Matrix]:
    """Off-diagonals × ``coherence``: √((1+c)/2)·I and √((1−c)/2)·Z."""
    return [
        math.sqrt((1 + coherence) / 2) * PAULI_I,
        math.sqrt((1 - coherence) / 2) * PAULI_Z,
    ]


def depolarizing_kraus(p: float) -> list[Matrix]:
    """(1−p)ρ + p·I/2 = (1 − 3p/4)ρ + (p/4)(XρX + YρY + ZρZ)."""
    return [math.sqrt(1 - 3 * p / 4) * PAULI_I] + [math.sqrt(p / 4) * s for s in PAULIS[1:]]


def depolarize_reference(rho: Matrix, targets: Sequence[int], p: float, n: int) -> Matrix:
    """(1−p)ρ + p·(I/2^k ⊗ Tr_targets ρ), the second term built from an explicit partial trace
    and re-embedded with an explicit permutation."""
    k = len(targets)
    rest = [q for q in range(n) if q not in targets]
    reduced = partial_trace(rho, rest, n)
    mixed = kron(np.eye(1 << k, dtype=np.complex128) / (1 << k), reduced)
    # ``mixed`` has qubits in the order targets + rest; bring them back to 0 … n−1.
    current = list(targets) + rest
    back = reorder(mixed, [current.index(q) for q in range(n)])
    out: Matrix = (1 - p) * rho + p * back
    return out


def random_density_matrix(rng: np.random.Generator, n: int) -> Matrix:
    """A full-rank-ish mixed state: a Dirichlet mixture of 1–3 Haar-ish random pure states."""
    dim = 1 << n
    count = int(rng.integers(1, 4))
    weights = rng.dirichlet(np.ones(count))
    rho: Matrix = np.zeros((dim, dim), dtype=np.complex128)
    for w in weights:
        ket = rng.normal(size=dim) + 1j * rng.normal(size=dim)
        ket /= np.linalg.norm(ket)
        rho += w * np.outer(ket, ket.conj())
    return rho


def assert_physical(rho: Matrix, atol: float = 1e-10) -> None:
    """Trace 1, Hermitian, positive semidefinite (eigenvalues ≥ −atol)."""
    assert abs(np.trace(rho) - 1) < atol
    np.testing.assert_allclose(rho, rho.conj().T, atol=atol, rtol=0)
    assert np.linalg.eigvalsh(rho).min() >= -atol


def binomial_bound(p: float, n: int) -> float:
    """Z_SCORE standard errors of a proportion estimated from n trials of probability p."""
    return Z_SCORE * math.sqrt(p * (1 - p) / n)


def mean_bound(variance: float, n: int) -> float:
    """Z_SCORE standard errors of a sample mean of n draws of the given variance."""
    return Z_SCORE * math.sqrt(variance / n)


def expectation(rho: Matrix, op: Matrix) -> float:
    return float(np.real(np.trace(op @ rho)))


# -- channel core set-ups --------------------------------------------------------------------

A, B = "alice", "bob"


def two_node_core(
    node_params: NodeParams | None = None,
    link_params: LinkParams | None = None,
    *,
    seed: int = 1,
    max_group_qubits: int = 10,
) -> ChannelCore:
    """A core with nodes alice and bob (same parameters) and a link between them."""
    core = ChannelCore(seed=seed, max_group_qubits=max_group_qubits)
    params = node_params if node_params is not None else NodeParams()
    core.register_node(A, params, 0)
    core.register_node(B, params, 0)
    core.declare_link(A, B, link_params if link_params is not None else LinkParams(), 0)
    return core


def run_until_idle(core: ChannelCore) -> None:
    """Advance to each due herald in turn until nothing is scheduled."""
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
