"""Pair-state predictions for the network layer, as Bell-diagonal weights.

An end-to-end pair is many link pairs joined by swaps at different nodes, and no single node
ever holds its state; each node predicts it from what the previous one said. The prediction is
a distribution over Bell states *relative to a nominal one*: ``q[e]`` is the probability that
the pair is in Bell state ``nominal ⊕ e`` (indices are x + 2z for (I ⊗ X^x Z^z)|Φ+⟩, so ⊕ is
the XOR of the two bits). Four numbers travel in a tracking message, and every operation the
network layer does is a convolution over that group:

- a swap with Pauli-frame tracking: the joined pair's errors are the XOR of the two pairs'
  errors, so its weights are their XOR-convolution (the teleportation channel of a Bell-
  diagonal resource is the Pauli channel with its weights: exact, not a fit);
- memory noise of one qubit: the backend's T1/T2/depolarising model (``memory_noise``)
  reduced to its Pauli twirl, which gives a Bell-diagonal pair the same Bell weights as the
  untwirled channel (only a pair's off-diagonal parts, e.g. the |11⟩ coherences of
  single-click pairs under damping, are beyond this);
- gate noise of the Bell measurement and measurement bit flips: depolarising after a gate
  scrambles the outcome it feeds, a flipped outcome is a wrong correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from qnet.physical.channel_core import memory_noise
from qnet.physical.params import NodeParams

#: Bell weights relative to the nominal state: (no error, X error, Z error, Y error).
Weights = tuple[float, float, float, float]

PERFECT: Weights = (1.0, 0.0, 0.0, 0.0)
UNIFORM: Weights = (0.25, 0.25, 0.25, 0.25)
_X = 1
_Z = 2


def werner(fidelity: float) -> Weights:
    """A Werner pair: the nominal state with ``fidelity``, the other three equally likely."""
    rest = (1.0 - fidelity) / 3.0
    return (fidelity, rest, rest, rest)


def relative(absolute: Sequence[float], nominal: int) -> Weights:
    """Weights indexed by Bell index (e.g. ``estimate.bell_coefficients``) made relative to
    ``nominal``, normalised (a prediction's rounding must not grow or shrink a pair)."""
    total = sum(absolute)
    if not total > 0.0 or len(absolute) != 4:
        raise ValueError(f"not a distribution over four Bell states: {tuple(absolute)!r}")
    w = [absolute[nominal ^ e] / total for e in range(4)]
    return (w[0], w[1], w[2], w[3])


def convolve(a: Weights, b: Weights) -> Weights:
    """The errors of two independent pairs combined: out[k] = Σ_{i⊕j=k} a[i]·b[j]."""
    out = [0.0, 0.0, 0.0, 0.0]
    for i in range(4):
        for j in range(4):
            out[i ^ j] += a[i] * b[j]
    return (out[0], out[1], out[2], out[3])


def scramble(q: Weights, p: float) -> Weights:
    """With probability ``p`` the pair's frame is lost entirely (a depolarised half, or a
    uniformly random Bell-measurement outcome)."""
    if p <= 0.0:
        return q
    return _mix(q, UNIFORM, p)


def flip(q: Weights, bit: int, p: float) -> Weights:
    """With probability ``p`` the frame is off by ``bit`` (1: X, 2: Z, 3: Y)."""
    if p <= 0.0:
        return q
    shifted = (q[bit], q[1 ^ bit], q[2 ^ bit], q[3 ^ bit])
    return _mix(q, shifted, p)


def fidelity(q: Weights) -> float:
    """Fidelity with the nominal Bell state."""
    return q[0]


def werner_parameter(q: Weights) -> float:
    """w = (4F − 1)/3: the factor by which Werner noise shrinks; swaps multiply it."""
    return (4.0 * q[0] - 1.0) / 3.0


# -- memory ------------------------------------------------------------------------------------


def idle(q: Weights, params: NodeParams, t_ns: int) -> Weights:
    """One half of the pair sat ``t_ns`` in the memory of a node with ``params``."""
    if t_ns <= 0 or not params.noisy_memory:
        return q
    p_x, p_z, p_y = pauli_twirl(params, t_ns)
    return convolve(q, (1.0 - p_x - p_z - p_y, p_x, p_z, p_y))


def pauli_twirl(params: NodeParams, t_ns: int) -> tuple[float, float, float]:
    """(p_X, p_Z, p_Y) of the twirled memory channel for ``t_ns`` idle.

    The backend applies damping γ, then coherence factor c, then depolarising p
    (``memory_noise``); its Pauli transfer diagonal is λ_X = λ_Y = √(1−γ)·c·(1−p) and
    λ_Z = (1−γ)(1−p), and p_P follows from the λ by the Walsh–Hadamard relation.
    """
    if t_ns <= 0 or not params.noisy_memory:
        return (0.0, 0.0, 0.0)
    damping, coherence, depolar = memory_noise(params, t_ns * 1e-9)
    lam_xy = math.sqrt(max(1.0 - damping, 0.0)) * coherence * (1.0 - depolar)
    lam_z = (1.0 - damping) * (1.0 - depolar)
    p_x = (1.0 - lam_z) / 4.0  # (1 + λx − λy − λz)/4 with λx = λy
    p_z = (1.0 - 2.0 * lam_xy + lam_z) / 4.0
    return (p_x, max(p_z, 0.0), p_x)


def idle_factor(params: NodeParams, t_ns: int) -> float:
    """The Werner-parameter factor of ``t_ns`` idle in this memory (1: no decay)."""
    return werner_parameter(idle(PERFECT, params, t_ns))


# -- operations ---------------------------------------------------------------------------------


def bell_measurement(up: Weights, down: Weights, params: NodeParams) -> Weights:
    """The pair joined by a swap at a node with ``params``, its frame tracked from the outcome.

    The node runs CNOT(u → d), H(u), then measures both: u gives the Z bit, d the X bit. After
    the CNOT a depolarised pair of qubits gives a uniformly random outcome; after the H a
    depolarised control flips its outcome (and so the Z bit) half the time; a measurement error
    flips its own bit.
    """
    q = convolve(up, down)
    q = scramble(q, params.gate_error_2q)
    q = flip(q, _Z, params.gate_error_1q / 2.0)
    q = flip(q, _Z, params.measure_error)
    return flip(q, _X, params.measure_error)


def corrected(q: Weights, gates: int, params: NodeParams) -> Weights:
    """The pair after its holder applied ``gates`` single-qubit correction gates."""
    for _ in range(gates):
        q = scramble(q, params.gate_error_1q)
    return q


def _mix(a: Weights, b: Weights, p: float) -> Weights:
    return (
        (1.0 - p) * a[0] + p * b[0],
        (1.0 - p) * a[1] + p * b[1],
        (1.0 - p) * a[2] + p * b[2],
        (1.0 - p) * a[3] + p * b[3],
    )
