"""Fidelity estimates from the physics model, and the per-request generation plan.

The link layer never sees a true state; it predicts one. A pair starts as the heralding model's
state for its bright state and Bell index (``heralding_model``), then each half decoheres in its
node's memory from the emission time on, and purification rounds transform pairs. Every map
here is the closed form the backend applies, so the prediction is exact, not a fit:

- memory noise of one qubit for t seconds: amplitude damping γ = 1 − e^(−t/T1), the remaining
  dephasing down to a coherence of e^(−t/T2), then depolarising 1 − e^(−Γt). They act
  elementwise on the 2-qubit density matrix (populations move |1⟩→|0⟩ and mix; coherences
  shrink), which for a Werner state reduces to F(t) = ¼ + (F₀ − ¼)e^(−Γt) per side;
- DEJMPS on two pairs, with the nodes' gate and measurement errors, as a 16×16 computation
  (two pairs at most, so this stays cheap); ``dejmps_bell_diagonal`` is the textbook formula
  the tests compare it against.

Pairs are ordered (master's qubit, slave's qubit), as the backend orders them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from qnet.physical.channel_core import memory_noise
from qnet.physical.gates import (
    BELL_STATES,
    CNOT,
    GateName,
    Matrix,
    gate_matrix,
    rx,
)
from qnet.physical.heralding import HeraldingModel, fibre_delay_ns, heralding_model
from qnet.physical.params import LinkParams, NodeParams, Scheme
from qnet.physical.state import conjugate, depolarized

#: Most purification rounds a plan uses: each round at least halves the rate.
MAX_ROUNDS = 3
#: Smallest bright state a plan considers (the rate goes to zero with α).
MIN_BRIGHT_STATE = 1e-4
_MAX_BRIGHT_STATE = 0.5


def fresh_pair(link: LinkParams, bright_state: float, bell_index: int) -> Matrix:
    """The heralded pair's state at emission (master's qubit first)."""
    state: Matrix = _model(link, bright_state).states[bell_index]
    return state


@functools.lru_cache(maxsize=256)
def _model(link: LinkParams, bright_state: float) -> HeraldingModel:
    return heralding_model(link, bright_state if link.scheme is Scheme.SINGLE_CLICK else None)


def pair_fidelity(rho: Matrix, bell_index: int) -> float:
    b = BELL_STATES[bell_index]
    return float(np.vdot(b, rho @ b).real)


def werner_fidelity(f0: float, rate_hz: float, t_ns: int) -> float:
    """Werner decay F(t) = ¼ + (F₀ − ¼)e^(−Γt) (DESIGN.md §5)."""
    return 0.25 + (f0 - 0.25) * math.exp(-rate_hz * t_ns * 1e-9)


def memory_factors(params: NodeParams, t_ns: int) -> tuple[float, float, float]:
    """(damping γ, extra coherence factor, depolarising p) for ``t_ns`` idle: the backend's own
    model (``channel_core.memory_noise``), so estimates follow the state exactly."""
    if t_ns <= 0 or not params.noisy_memory:
        return 0.0, 1.0, 0.0
    return memory_noise(params, t_ns * 1e-9)


def decay(rho: Matrix, side: int, params: NodeParams, t_ns: int) -> Matrix:
    """Memory noise on qubit ``side`` (0 master, 1 slave) of a pair for ``t_ns``."""
    damping, coherence, depolar = memory_factors(params, t_ns)
    if damping == 0.0 and coherence == 1.0 and depolar == 0.0:
        return rho
    # Axes (a, b, a', b'): blocks [i, j] of this side's row i and column j.
    v = rho.reshape(2, 2, 2, 2).copy()
    i00, i01, i10, i11 = _BLOCKS[side]
    if damping > 0.0:
        v[i00] += damping * v[i11]
        v[i11] *= 1.0 - damping
        v[i01] *= math.sqrt(1.0 - damping)
        v[i10] *= math.sqrt(1.0 - damping)
    if coherence != 1.0:
        v[i01] *= coherence
        v[i10] *= coherence
    if depolar > 0.0:
        mixed = 0.5 * depolar * (v[i00] + v[i11])
        v *= 1.0 - depolar
        v[i00] += mixed
        v[i11] += mixed
    out: Matrix = v.reshape(4, 4)
    return out


_ALL = slice(None)
_PAIRS = ((0, 0), (0, 1), (1, 0), (1, 1))
#: Per side, the index of blocks (0, 0), (0, 1), (1, 0), (1, 1) of the (a, b, a', b') view.
_BLOCKS = (
    tuple((i, _ALL, j, _ALL) for i, j in _PAIRS),
    tuple((_ALL, i, _ALL, j) for i, j in _PAIRS),
)


def age(rho: Matrix, nodes: tuple[NodeParams, NodeParams], dt: tuple[int, int]) -> Matrix:
    """Memory noise on both halves: ``dt[i]`` ns on side i with ``nodes[i]``'s memory."""
    return decay(decay(rho, 0, nodes[0], dt[0]), 1, nodes[1], dt[1])


# -- DEJMPS -----------------------------------------------------------------------------------

_CORRECTIONS: dict[int, tuple[GateName, ...]] = {
    0: (),
    1: (GateName.X,),
    2: (GateName.Z,),
    # (X Z)† = Z X = −iY: one gate instead of two, so Ψ− pays no more gate noise than Ψ+ (the
    # planner assumes one correction gate).
    3: (GateName.Y,),
}


def correction_gates(bell_index: int) -> tuple[GateName, ...]:
    """Gates the slave applies, in order, to turn Bell state ``bell_index`` = x + 2z, i.e.
    (I ⊗ X^x Z^z)|Φ+⟩, into Φ+: X^x undoes the X, then Z^z the Z (up to a global phase)."""
    return _CORRECTIONS[bell_index]


def correct_to_phi_plus(rho: Matrix, bell_index: int, slave: NodeParams) -> Matrix:
    """The slave's correction gates (with its gate noise) on a pair of index ``bell_index``."""
    for gate in correction_gates(bell_index):
        op = gate_matrix(gate)
        rho = depolarized(conjugate(rho, op, (1,), 2), (1,), slave.gate_error_1q, 2)
    return rho


#: DEJMPS rotations: the master applies RX(+π/2), the slave RX(−π/2), to both its qubits.
MASTER_ANGLE = math.pi / 2
SLAVE_ANGLE = -math.pi / 2


def dejmps(
    keep: Matrix, sacrifice: Matrix, master: NodeParams, slave: NodeParams
) -> tuple[float, Matrix]:
    """One DEJMPS round on two Φ+-type pairs (already aged to the operation times): rotations,
    CNOT keep→sacrifice at each end, measure the sacrifice in Z, keep on equal outcomes.
    Returns (success probability, state of the kept pair on success), with the nodes' gate
    and measurement errors."""
    n = 4  # qubit order: keep master, keep slave, sacrifice master, sacrifice slave
    rho: Matrix = np.kron(keep, sacrifice).astype(np.complex128)
    for q, angle, node in ((0, MASTER_ANGLE, master), (2, MASTER_ANGLE, master)):
        rho = depolarized(conjugate(rho, rx(angle), (q,), n), (q,), node.gate_error_1q, n)
    for q, angle, node in ((1, SLAVE_ANGLE, slave), (3, SLAVE_ANGLE, slave)):
        rho = depolarized(conjugate(rho, rx(angle), (q,), n), (q,), node.gate_error_1q, n)
    rho = depolarized(conjugate(rho, CNOT, (0, 2), n), (0, 2), master.gate_error_2q, n)
    rho = depolarized(conjugate(rho, CNOT, (1, 3), n), (1, 3), slave.gate_error_2q, n)
    t = rho.reshape(4, 2, 2, 4, 2, 2)  # (keep, m_master, m_slave) rows and columns
    ea, eb = master.measure_error, slave.measure_error
    same = (1 - ea) * (1 - eb) + ea * eb
    differ = ea * (1 - eb) + (1 - ea) * eb
    out: Matrix = np.zeros((4, 4), dtype=np.complex128)
    for ma in (0, 1):
        for mb in (0, 1):
            out += (same if ma == mb else differ) * t[:, ma, mb, :, ma, mb]
    p = float(np.real(np.trace(out)))
    return p, (out / p if p > 0 else out)


BellWeights = tuple[float, float, float, float]


def bell_coefficients(rho: Matrix) -> BellWeights:
    """Weights on Φ+, Ψ+, Φ−, Ψ− (Bell indices 0..3): ⟨b_i|ρ|b_i⟩ for the Bell basis."""
    a, b, c, d = np.einsum("ji,ji->i", _BELL_BASIS.conj(), rho @ _BELL_BASIS).real.tolist()
    return a, b, c, d


def aged_weights(
    rho: Matrix, nodes: tuple[NodeParams, NodeParams], dt: tuple[int, int]
) -> BellWeights | None:
    """``bell_coefficients(age(rho, nodes, dt))`` in closed form when the memories only
    depolarise (no damping or dephasing); None otherwise.

    Depolarising one half of any pair with p gives (1 − p)ρ + p·(I/2 ⊗ Tr_half ρ), and every
    Bell state's reduced state is I/2, so each Bell weight becomes (1 − p)w + p/4, exactly:
    no 4×4 matrices on the path every delivery takes."""
    damping0, coherence0, p0 = memory_factors(nodes[0], dt[0])
    damping1, coherence1, p1 = memory_factors(nodes[1], dt[1])
    # The joint solution's coherence factor is 1 up to rounding when only depolarising acts.
    if damping0 or damping1 or abs(coherence0 - 1.0) > 1e-12 or abs(coherence1 - 1.0) > 1e-12:
        return None
    keep = (1.0 - p0) * (1.0 - p1)
    mixed = 0.25 * (1.0 - keep)
    a, b, c, d = _weights_of(rho)
    return keep * a + mixed, keep * b + mixed, keep * c + mixed, keep * d + mixed


def _weights_of(rho: Matrix) -> BellWeights:
    """``bell_coefficients`` of a state that does not change (a pair's, until purified), kept
    for the state's identity: the link layer ages the same predicted state many times."""
    key = id(rho)
    found = _WEIGHTS_MEMO.get(key)
    if found is not None and found[0] is rho:
        return found[1]
    weights = bell_coefficients(rho)
    if len(_WEIGHTS_MEMO) >= _WEIGHTS_MEMO_SIZE:
        _WEIGHTS_MEMO.clear()
    _WEIGHTS_MEMO[key] = (rho, weights)
    return weights


_WEIGHTS_MEMO: dict[int, tuple[Matrix, BellWeights]] = {}
_WEIGHTS_MEMO_SIZE = 1024


#: Bell states as columns, by Bell index.
_BELL_BASIS = np.stack(BELL_STATES, axis=1)


def dejmps_bell_diagonal(
    first: tuple[float, float, float, float], second: tuple[float, float, float, float]
) -> tuple[float, tuple[float, float, float, float]]:
    """DEJMPS for Bell-diagonal inputs, coefficients by Bell index (Φ+, Ψ+, Φ−, Ψ−), noiseless:
    p = (A₁+B₁)(A₂+B₂)+(C₁+D₁)(C₂+D₂) with A=Φ+, B=Ψ−, C=Ψ+, D=Φ−, and
    A' = (A₁A₂+B₁B₂)/p, B' = (C₁D₂+D₁C₂)/p, C' = (C₁C₂+D₁D₂)/p, D' = (A₁B₂+B₁A₂)/p."""
    a1, c1, d1, b1 = first
    a2, c2, d2, b2 = second
    p = (a1 + b1) * (a2 + b2) + (c1 + d1) * (c2 + d2)
    a = (a1 * a2 + b1 * b2) / p
    b = (c1 * d2 + d1 * c2) / p
    c = (c1 * c2 + d1 * d2) / p
    d = (a1 * b2 + b1 * a2) / p
    return p, (a, c, d, b)


# -- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """How to serve a request: the bright state to arm with and DEJMPS rounds per pair."""

    bright_state: float
    rounds: int
    #: Predicted fidelity at delivery and delivered pairs per second.
    fidelity: float
    rate_hz: float


def delivery_wait_ns(link: LinkParams) -> int:
    """Expected time from emission to delivery at the slave: the herald's flight back, then
    the master's assignment over the whole link, doubled for slack (queueing, gates)."""
    flight: int = _model(link, link.bright_state).flight_ns
    return 2 * (flight + fibre_delay_ns(link.length_km))


@functools.lru_cache(maxsize=1024)
def plan(
    link: LinkParams,
    master: NodeParams,
    slave: NodeParams,
    min_fidelity: float,
    latency_ns: int = 0,
) -> Plan | None:
    """The fastest way to reach ``min_fidelity`` at delivery, or None if none reaches it.

    ``latency_ns`` is the expected processing and messaging delay beyond light in fibre (zero
    in ``qnet.sim``; milliseconds between daemon processes): pairs age that much longer before
    delivery, and a plan without it would aim exactly at the target and miss it.

    Fresh fidelity falls as α grows, but with noisy memories a tiny α is slow enough for pairs
    to decohere while they wait for a purification partner, so fidelity is not monotone in α:
    scan a log grid, take the fastest candidate that meets the target, then refine its α
    towards the next (failing) grid point by bisection. Purification is only considered when
    raw pairs cannot reach the target; then every round count competes on rate.
    """
    nodes = (master, slave)
    wait = delivery_wait_ns(link) + latency_ns
    single = link.scheme is Scheme.SINGLE_CLICK
    grid = _ALPHA_GRID if single else (0.0,)
    overall: Plan | None = None
    for rounds in range(MAX_ROUNDS + 1):
        found = [(i, _evaluate(link, nodes, a, rounds, wait)) for i, a in enumerate(grid)]
        good = [(i, c) for i, c in found if c is not None and c.fidelity >= min_fidelity]
        if not good:
            continue
        i, best = max(good, key=lambda item: item[1].rate_hz)
        if single and i + 1 < len(grid):
            lo, hi = math.log(grid[i]), math.log(grid[i + 1])
            for _ in range(16):
                mid = (lo + hi) / 2
                alpha = min(_MAX_BRIGHT_STATE, math.exp(mid))
                cand = _evaluate(link, nodes, alpha, rounds, wait)
                if cand is not None and cand.fidelity >= min_fidelity:
                    best, lo = _faster(best, cand), mid
                else:
                    hi = mid
        if rounds == 0:
            return best
        overall = _faster(overall, best)
    return overall


#: Bright states the plan scans: 32 points, evenly spaced in log α over [1e-4, 0.5].
_ALPHA_GRID = tuple(
    min(_MAX_BRIGHT_STATE, MIN_BRIGHT_STATE * (_MAX_BRIGHT_STATE / MIN_BRIGHT_STATE) ** (k / 31))
    for k in range(32)
)


def _faster(a: Plan | None, b: Plan) -> Plan:
    return b if a is None or b.rate_hz > a.rate_hz else a


def _evaluate(
    link: LinkParams,
    nodes: tuple[NodeParams, NodeParams],
    alpha: float,
    rounds: int,
    wait: int,
) -> Plan | None:
    model = _model(link, alpha)
    rate = model.rate_hz
    if rate <= 0:
        return None
    rho = fresh_pair(link, alpha, 1)
    index = 1
    gap = round(1e9 / rate)  # expected wait of a pair for its partner in a round
    for _ in range(rounds):
        rho = correct_to_phi_plus(rho, index, nodes[1])
        index = 0
        older = age(rho, nodes, (gap + wait, gap + wait))
        newer = age(rho, nodes, (wait, wait))
        p, rho = dejmps(older, newer, nodes[0], nodes[1])
        if p <= 0:
            return None
        rate *= p / 2
        gap = round(1e9 / rate)
    fidelity = pair_fidelity(age(rho, nodes, (wait, wait)), index)
    return Plan(alpha, rounds, fidelity, rate)
