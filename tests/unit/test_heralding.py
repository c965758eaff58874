"""Heralded generation through ChannelCore against theory, statistically, for both schemes.

Theory (heralding.py's docstring, re-derived here independently of its code):
  η = emission · 10^(−att·L/2/10) · detector     (one arm: node to the midpoint detector)
  single-click, bright state α:  p = αη(2 − αη),  w = 2(1 − α)/(2 − αη)
  double-click (Barrett–Kok):    p = η²/2,        w = 1
  fresh pair = λ·raw + (1 − λ)·I/4 with λ = (4F_source − 1)/3, so F = λw + (1 − λ)/4
  flight = L / (2·10^8 m/s) (node → midpoint → node); cycle = overhead + flight, doubled for
  double-click (two rounds).
The number of attempts is geometric with mean 1/p and variance (1 − p)/p².
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pytest

from qnet.errors import InvalidArgument
from qnet.physical.channel_core import ChannelCore
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import Basis
from qnet.physical.heralding import HeraldingModel
from qnet.physical.params import LinkParams, NodeParams, Scheme
from tests.unit.physics_reference import (
    PAULI_X,
    PAULI_Y,
    PAULI_Z,
    PSI_MINUS,
    PSI_PLUS,
    Z_SCORE,
    A,
    B,
    binomial_bound,
    expectation,
    kron,
    mean_bound,
    projector,
    run_until_idle,
    two_node_core,
)

EXACT = 1e-9


@dataclass(frozen=True)
class Case:
    link: LinkParams
    bright_state: float | None = None  # per-request override, set at alice (the lower name)

    @property
    def alpha(self) -> float:
        return self.link.bright_state if self.bright_state is None else self.bright_state


CASES = {
    "single-10km": Case(LinkParams(length_km=10.0, scheme=Scheme.SINGLE_CLICK)),
    "single-25km-alpha0.3": Case(
        LinkParams(length_km=25.0, scheme=Scheme.SINGLE_CLICK, source_fidelity=0.97), 0.3
    ),
    "single-0km-alpha0.05": Case(
        LinkParams(length_km=0.0, scheme=Scheme.SINGLE_CLICK, bright_state=0.05)
    ),
    "double-10km": Case(LinkParams(length_km=10.0, scheme=Scheme.DOUBLE_CLICK)),
    "double-2km-lossy": Case(
        LinkParams(
            length_km=2.0,
            scheme=Scheme.DOUBLE_CLICK,
            source_fidelity=0.9,
            detector_efficiency=0.8,
            emission_efficiency=0.7,
            attempt_overhead_ns=3000,
        )
    ),
    "double-100km": Case(LinkParams(length_km=100.0, scheme=Scheme.DOUBLE_CLICK)),
}


def theory_eta(link: LinkParams) -> float:
    return (
        link.emission_efficiency
        * 10 ** (-link.attenuation_db_per_km * link.length_km / 2 / 10)
        * link.detector_efficiency
    )


def theory_p(case: Case) -> float:
    eta = theory_eta(case.link)
    if case.link.scheme is Scheme.SINGLE_CLICK:
        return case.alpha * eta * (2 - case.alpha * eta)
    return eta * eta / 2


def theory_fidelity(case: Case) -> float:
    lam = (4 * case.link.source_fidelity - 1) / 3
    if case.link.scheme is Scheme.SINGLE_CLICK:
        eta = theory_eta(case.link)
        w = 2 * (1 - case.alpha) / (2 - case.alpha * eta)
    else:
        w = 1.0
    return lam * w + (1 - lam) / 4


def theory_flight_ns(link: LinkParams) -> int:
    # 1 km of fibre takes 5000 ns; every length used here is a whole number of ns per half.
    return round(link.length_km * 5000)


def theory_cycle_ns(link: LinkParams) -> int:
    one = link.attempt_overhead_ns + theory_flight_ns(link)
    return one if link.scheme is Scheme.SINGLE_CLICK else 2 * one


@dataclass(frozen=True)
class Run:
    model: HeraldingModel
    armed_at: int
    at_a: tuple[HeraldEvent, ...]  # alice's events, in sequence order
    at_b: tuple[HeraldEvent, ...]
    oracle: tuple[float, ...]  # each pair's oracle fidelity with its heralded state, at herald


def generate(case: Case, pairs: int, *, seed: int, armed_at: int = 12_345) -> ChannelCore:
    """A core in which ``pairs`` qubits per end were armed at ``armed_at``, all heralded."""
    core = two_node_core(NodeParams(memory_qubits=pairs), case.link, seed=seed)
    qa = core.allocate(A, pairs, armed_at)
    qb = core.allocate(B, pairs, armed_at)
    core.start_generation(A, B, qa, armed_at, bright_state=case.bright_state)
    core.start_generation(B, A, qb, armed_at)
    return core


@functools.cache
def run(name: str) -> Run:
    """10000 pairs of ``name``'s case (cached: the statistical tests below share them)."""
    case = CASES[name]
    pairs = 10_000
    armed_at = 12_345
    core = generate(case, pairs, seed=sum(map(ord, name)), armed_at=armed_at)
    at_a: list[HeraldEvent] = []
    at_b: list[HeraldEvent] = []
    oracle: list[float] = []
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
        events = core.pop_events()
        assert len(events) == 2
        ea, eb = sorted(events, key=lambda e: e.node)
        at_a.append(ea)
        at_b.append(eb)
        oracle.append(core.oracle_pair_fidelity(ea.qubit, eb.qubit, ea.bell_index, deadline))
    assert len(at_a) == pairs
    return Run(
        model=core.link_theory(A, B, case.bright_state),
        armed_at=armed_at,
        at_a=tuple(at_a),
        at_b=tuple(at_b),
        oracle=tuple(oracle),
    )


NAMES = list(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_model_matches_the_closed_forms(name: str) -> None:
    case = CASES[name]
    model = run(name).model
    assert abs(model.transmissivity - theory_eta(case.link)) < EXACT
    assert abs(model.success_probability - theory_p(case)) < EXACT
    assert model.flight_ns == theory_flight_ns(case.link)
    assert model.cycle_ns == theory_cycle_ns(case.link)
    assert abs(model.rate_hz - theory_p(case) / (theory_cycle_ns(case.link) * 1e-9)) < 1e-6
    for index in (1, 3):
        assert abs(model.fidelity(index) - theory_fidelity(case)) < EXACT
    if case.link.scheme is Scheme.DOUBLE_CLICK:
        assert abs(model.fidelity() - case.link.source_fidelity) < EXACT
        assert model.bright_state == 0.0
    else:
        assert model.bright_state == case.alpha


@pytest.mark.parametrize("name", NAMES)
def test_attempts_are_geometric_with_mean_one_over_p(name: str) -> None:
    r = run(name)
    p = theory_p(CASES[name])
    attempts = np.array([e.attempts for e in r.at_a])
    assert attempts.min() >= 1
    assert [e.attempts for e in r.at_b] == attempts.tolist()
    assert abs(attempts.mean() - 1 / p) <= mean_bound((1 - p) / p**2, len(attempts))
    # The geometric law itself, not only its mean: P(attempts = 1) = p.
    assert abs(np.mean(attempts == 1) - p) <= binomial_bound(p, len(attempts))


@pytest.mark.parametrize("name", NAMES)
def test_time_to_success_is_attempts_times_cycle(name: str) -> None:
    r = run(name)
    case = CASES[name]
    cycle = theory_cycle_ns(case.link)
    times = [r.armed_at] + [e.time_ns for e in r.at_a]
    for k, event in enumerate(r.at_a):
        assert times[k + 1] - times[k] == event.attempts * cycle
    assert [e.time_ns for e in r.at_b] == times[1:]
    p = theory_p(case)
    n = len(r.at_a)
    mean_gap = (times[-1] - r.armed_at) / n
    assert abs(mean_gap - cycle / p) <= cycle * mean_bound((1 - p) / p**2, n)


@pytest.mark.parametrize("name", NAMES)
def test_bell_index_is_psi_plus_or_psi_minus_with_equal_probability(name: str) -> None:
    r = run(name)
    indices = [e.bell_index for e in r.at_a]
    assert [e.bell_index for e in r.at_b] == indices
    assert set(indices) <= {1, 3}
    n = len(indices)
    assert abs(indices.count(1) / n - 0.5) <= binomial_bound(0.5, n)


@pytest.mark.parametrize("name", NAMES)
def test_oracle_fidelity_of_fresh_pairs(name: str) -> None:
    r = run(name)
    expected = theory_fidelity(CASES[name])
    for event, fidelity in zip(r.at_a, r.oracle, strict=True):
        assert abs(fidelity - r.model.fidelity(event.bell_index)) < EXACT
        assert abs(fidelity - expected) < EXACT


def test_single_click_fidelity_is_the_bright_state_closed_form() -> None:
    """With a perfect source, F = 2(1 − α)/(2 − αη) exactly, η including both efficiencies."""
    for length, alpha in ((0.0, 0.05), (10.0, 0.1), (30.0, 0.25), (100.0, 0.5)):
        link = LinkParams(length_km=length, bright_state=alpha, emission_efficiency=0.6)
        core = two_node_core(link_params=link)
        eta = 0.6 * 10 ** (-0.2 * length / 2 / 10) * 0.9
        closed = 2 * (1 - alpha) / (2 - alpha * eta)
        assert abs(core.link_theory(A, B).fidelity() - closed) < EXACT
        assert abs(core.link_theory(A, B).fidelity(3) - closed) < EXACT


@pytest.mark.parametrize("name", NAMES)
def test_emission_time_and_sequence_numbers(name: str) -> None:
    r = run(name)
    flight = theory_flight_ns(CASES[name].link)
    for k, (ea, eb) in enumerate(zip(r.at_a, r.at_b, strict=True), start=1):
        assert ea.sequence == eb.sequence == k
        assert ea.emitted_ns == eb.emitted_ns == ea.time_ns - flight
        assert ea.time_ns == eb.time_ns
        assert (ea.peer, eb.peer) == (B, A)
        assert ea.link_id == eb.link_id == f"{A}|{B}"
        assert ea.bright_state == eb.bright_state == r.model.bright_state
    assert len({e.qubit for e in r.at_a} | {e.qubit for e in r.at_b}) == 2 * len(r.at_a)


@pytest.mark.parametrize("name", ["single-10km", "double-2km-lossy", "double-100km"])
def test_pairs_per_simulated_second_match_the_rate(name: str) -> None:
    """Count the heralds in a window W. By the renewal central limit theorem the count has mean
    W/μ and variance W·σ²/μ³ with μ = cycle/p, σ² = cycle²(1 − p)/p², i.e. mean W·rate and
    variance W·rate·(1 − p); the bound adds 1 for the O(1) renewal and lattice bias."""
    case = CASES[name]
    core = generate(case, 3000, seed=99)
    model = core.link_theory(A, B, case.bright_state)
    p = model.success_probability
    window_s = 2000 / model.rate_hz  # about 2000 pairs, fewer than the 3000 armed
    start = core.now
    core.advance(start + round(window_s * 1e9))
    count = len(core.pop_events()) // 2
    expected = model.rate_hz * window_s
    assert abs(count - expected) <= Z_SCORE * math.sqrt(expected * (1 - p)) + 1


#: For each heralded Bell state, the sign s_b with |ψ⟩⟨ψ| = (II + Σ_b s_b σ_b⊗σ_b)/4, i.e.
#: s_b = ⟨σ_b⊗σ_b⟩ in the pure state. Ψ+ = (|01⟩ + |10⟩)/√2: XX swaps |01⟩↔|10⟩ (+1); YY does
#: too with phase (i)(−i) = +1; ZZ gives (+1)(−1) = −1. Ψ− = (|01⟩ − |10⟩)/√2 is the singlet:
#: the swap gives −1 for XX and YY, and ZZ is −1 again.
SIGNS = {1: {"X": 1, "Y": 1, "Z": -1}, 3: {"X": -1, "Y": -1, "Z": -1}}
PAULI_OF = {"X": PAULI_X, "Y": PAULI_Y, "Z": PAULI_Z}
BASIS_OF = {"X": Basis.X, "Y": Basis.Y, "Z": Basis.Z}


def test_correlation_signs_of_the_heralded_bell_states() -> None:
    for index, ket in ((1, PSI_PLUS), (3, PSI_MINUS)):
        rho = projector(ket)
        for b, sign in SIGNS[index].items():
            assert abs(expectation(rho, kron(PAULI_OF[b], PAULI_OF[b])) - sign) < EXACT
        rebuilt = np.eye(4, dtype=np.complex128) / 4
        for b, s in SIGNS[index].items():
            rebuilt += s * kron(PAULI_OF[b], PAULI_OF[b]) / 4
        np.testing.assert_allclose(rebuilt, rho, atol=EXACT)


@pytest.mark.parametrize("name", ["single-25km-alpha0.3", "double-2km-lossy"])
def test_measured_fidelity_from_correlations(name: str) -> None:
    """F = (1 + Σ_b s_b⟨σ_b⊗σ_b⟩)/4 estimated from the outcomes of n pairs per basis. Each signed
    product is ±1 with mean m_b, so its sample mean has variance (1 − m_b²)/n and the estimate
    of F has standard error √(Σ_b (1 − m_b²)/n)/4. The m_b come from the model's state (they
    are the same for Ψ+ and Ψ− pairs)."""
    case = CASES[name]
    per_basis = 6000
    core = generate(case, 3 * per_basis, seed=2024)
    model = core.link_theory(A, B, case.bright_state)
    signed: dict[str, list[int]] = {b: [] for b in "XYZ"}
    while (deadline := core.next_deadline()) is not None:
        core.advance(deadline)
        ea, eb = sorted(core.pop_events(), key=lambda e: e.node)
        b = "XYZ"[ea.sequence % 3]
        ma = core.measure(A, ea.qubit, BASIS_OF[b], deadline)
        mb = core.measure(B, eb.qubit, BASIS_OF[b], deadline)
        signed[b].append(SIGNS[ea.bell_index][b] * (-1) ** (ma + mb))
    assert core.qubits_in_use == 0
    estimate = (1 + sum(float(np.mean(v)) for v in signed.values())) / 4
    variance = 0.0
    for b in "XYZ":
        pauli = kron(PAULI_OF[b], PAULI_OF[b])
        m_b = SIGNS[1][b] * expectation(model.states[1], pauli)
        assert abs(m_b - SIGNS[3][b] * expectation(model.states[3], pauli)) < EXACT
        variance += (1 - m_b**2) / len(signed[b])
    assert abs(estimate - model.fidelity()) <= Z_SCORE * math.sqrt(variance) / 4
    assert abs(estimate - theory_fidelity(case)) <= Z_SCORE * math.sqrt(variance) / 4


def test_lengths_zero_and_one_hundred_km_deliver() -> None:
    for length in (0.0, 100.0):
        for scheme in Scheme:
            core = generate(Case(LinkParams(length_km=length, scheme=scheme)), 5, seed=3)
            while (deadline := core.next_deadline()) is not None:
                core.advance(deadline)
            events = core.pop_events()
            assert len(events) == 10
            assert all(
                e.time_ns - e.emitted_ns == theory_flight_ns(core.link_params(A, B)) for e in events
            )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("length_km", math.nan),
        ("length_km", -1.0),
        ("length_km", math.inf),
        ("bright_state", 0.0),
        ("bright_state", 0.51),
        ("bright_state", math.nan),
        ("detector_efficiency", 0.0),
        ("detector_efficiency", 1.2),
        ("emission_efficiency", 0.0),
        ("source_fidelity", 0.2),
        ("attenuation_db_per_km", -0.1),
    ],
)
def test_bad_link_params_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=field):
        LinkParams(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.6, math.nan])
def test_bad_bright_state_per_request_is_refused(alpha: float) -> None:
    core = two_node_core()
    (q,) = core.allocate(A, 1, 0)
    with pytest.raises(InvalidArgument, match="bright_state"):
        core.start_generation(A, B, [q], 0, bright_state=alpha)
    with pytest.raises(InvalidArgument, match="bright_state"):
        core.link_theory(A, B, alpha)
    assert core.start_generation(A, B, [q], 0) == 1


def test_the_lower_named_end_chooses_the_bright_state() -> None:
    """The link's ends may ask for different bright states; the lower name's request (alice's)
    decides, and with none the link's own setting applies."""
    link = LinkParams(bright_state=0.1)
    for alice_alpha, bob_alpha, used in ((None, 0.4, 0.1), (0.25, 0.4, 0.25), (0.3, None, 0.3)):
        core = two_node_core(link_params=link, seed=1)
        (qa,) = core.allocate(A, 1, 0)
        (qb,) = core.allocate(B, 1, 0)
        core.start_generation(A, B, [qa], 0, bright_state=alice_alpha)
        core.start_generation(B, A, [qb], 0, bright_state=bob_alpha)
        run_until_idle(core)
        events = core.pop_events()
        assert [e.bright_state for e in events] == [used, used]
        expected = core.link_theory(A, B, used).fidelity(events[0].bell_index)
        got = core.oracle_pair_fidelity(qa, qb, events[0].bell_index, core.now)
        assert abs(got - expected) < EXACT
