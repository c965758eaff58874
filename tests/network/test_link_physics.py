"""What the link layer's pairs are, checked on whole in-process networks against the physics.

- MEASURE pairs: outcome correlations in Z, X and Y have the sign the reported Bell index
  gives and the size the model predicts; RANDOM bases are drawn independently at each end.
- KEEP pairs: each end's fidelity estimate agrees with the backend's oracle (the true state)
  within 0.01 at the moment the pair reaches the user, at both ends.
- CHSH on KEEP pairs, rotated with RY and measured, against the value predicted from the true
  state (not from a Werner assumption).

Every statistical bound is Z_SCORE (5) standard errors of the estimate in question.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import trio

from qnet.link.events import BasisChoice, CreateRequest, Kind, PairOk
from qnet.physical.gates import Basis, GateName
from qnet.sim import SimNetwork, open_network
from qnet.topology import Topology
from tests.network.linkhelpers import (
    Z_SCORE,
    bell_sign,
    binomial_bound,
    example,
    mean_and_error,
    oracle_bell_weights,
    serve,
    sign,
    two_nodes,
)

A, B = "alice", "bob"
BOUND_S = 60
BASES = (Basis.Z, Basis.X, Basis.Y)

#: Double-click pairs are the heralded Bell state mixed with white noise (source fidelity F_s,
#: weight λ = (4F_s − 1)/3 on the Bell state) whatever the bright state; no memory noise, so
#: a measured pair shows ⟨σ⊗σ⟩ = ±λ(1 − 2e)² with measurement error e at each end.
SOURCE_FIDELITY = 0.95
MEASURE_ERROR = 0.02
LAMBDA = (4 * SOURCE_FIDELITY - 1) / 3
CORRELATION = LAMBDA * (1 - 2 * MEASURE_ERROR) ** 2


def double_click() -> Topology:
    return two_nodes(
        scheme="double_click",
        length_km=2.0,
        source_fidelity=SOURCE_FIDELITY,
        measure_error=MEASURE_ERROR,
    )


def signed(m: PairOk, s: PairOk) -> int:
    """The outcome product, signed so that the pair's Bell state predicts +1 (same basis)."""
    assert m.basis is s.basis
    assert m.basis is not None
    assert m.outcome is not None
    assert s.outcome is not None
    return sign(m.outcome, s.outcome) * bell_sign(m.bell_index, m.basis)


async def test_measured_correlations_match_the_bell_index(autojump_clock: trio.abc.Clock) -> None:
    """MEASURE requests in Z, X and Y (from either end): ⟨σ⊗σ⟩ has the sign of the reported
    Bell state (Ψ+: ZZ −, XX +, YY +; Ψ−: all −) and magnitude λ(1−2e)²; Ψ+ and Ψ− are
    heralded equally often."""
    n = 400
    requests = [
        (A, CreateRequest(B, number=n, kind=Kind.MEASURE, basis=BasisChoice.Z)),
        (B, CreateRequest(A, number=n, kind=Kind.MEASURE, basis=BasisChoice.X)),
        (A, CreateRequest(B, number=n, kind=Kind.MEASURE, basis=BasisChoice.Y)),
    ]
    with trio.fail_after(BOUND_S):
        async with open_network(double_click()) as net:
            watch = await serve(net, A, B, requests)
    assert len(watch.pairs) == 3 * n
    for basis in BASES:
        values = [signed(m, s) for m, s in watch.pairs if m.basis is basis]
        assert len(values) == n
        mean = sum(values) / n
        bound = Z_SCORE * math.sqrt((1 - CORRELATION**2) / n)
        assert abs(mean - CORRELATION) <= bound, (basis, mean, CORRELATION, bound)
    psi_plus = sum(m.bell_index == 1 for m, _ in watch.pairs)
    assert {m.bell_index for m, _ in watch.pairs} == {1, 3}
    assert abs(psi_plus / (3 * n) - 0.5) <= binomial_bound(0.5, 3 * n)


async def test_random_bases_are_independent_and_correlated_where_they_match(
    autojump_clock: trio.abc.Clock,
) -> None:
    """BasisChoice.RANDOM: each end draws Z, X or Y uniformly and independently of the other
    (each of the 9 combinations has probability 1/9); where the bases match the outcomes show
    the Bell correlation, where they differ they are uncorrelated (⟨σ_a⊗σ_b⟩ = 0, a ≠ b, for
    a Bell state mixed with white noise)."""
    n = 1350
    request = CreateRequest(B, number=n, kind=Kind.MEASURE, basis=BasisChoice.RANDOM)
    with trio.fail_after(BOUND_S):
        async with open_network(double_click()) as net:
            watch = await serve(net, A, B, [(A, request)])
    assert len(watch.pairs) == n
    for end in (0, 1):
        counts = Counter(pair[end].basis for pair in watch.pairs)
        assert set(counts) == set(BASES)
        for basis in BASES:
            assert abs(counts[basis] / n - 1 / 3) <= binomial_bound(1 / 3, n), (end, counts)
    joint = Counter((m.basis, s.basis) for m, s in watch.pairs)
    for a in BASES:
        for b in BASES:
            assert abs(joint[a, b] / n - 1 / 9) <= binomial_bound(1 / 9, n), joint
    matched = [signed(m, s) for m, s in watch.pairs if m.basis is s.basis]
    mean, _ = mean_and_error(matched)
    assert abs(mean - CORRELATION) <= Z_SCORE * math.sqrt((1 - CORRELATION**2) / len(matched))
    crossed = [
        sign(m.outcome or 0, s.outcome or 0) for m, s in watch.pairs if m.basis is not s.basis
    ]
    assert abs(sum(crossed) / len(crossed)) <= Z_SCORE / math.sqrt(len(crossed))


#: For purified pairs: two_nodes' noise without its measurement error. With measurement errors
#: a purified pair's true state depends on whether a sacrifice outcome was misreported, which
#: no end can know; the estimate is then an average (test_link_purify checks that case).
PURIFYING = two_nodes(
    source_fidelity=0.99, t1_s=10.0, t2_s=1.0, gate_error_1q=1e-4, gate_error_2q=1e-3
)


@pytest.mark.parametrize(
    ("topology", "min_fidelity", "number"),
    [
        pytest.param(example("two_nodes"), 0.9, 80, id="two_nodes-0.9"),
        # The fastest bright state: a large |11⟩ part.
        pytest.param(example("two_nodes"), 0.0, 80, id="two_nodes-0"),
        # T1 = 50 ms, T2 = 10 ms, depolarising memories, 10 % measurement error.
        pytest.param(example("noisy_two_nodes"), 0.5, 80, id="noisy_two_nodes-0.5"),
        pytest.param(example("chain4"), 0.95, 40, id="chain4-0.95"),
        # Out of reach of raw pairs: two DEJMPS rounds.
        pytest.param(PURIFYING, 0.99, 20, id="purified-0.99"),
    ],
)
async def test_fidelity_estimates_agree_with_the_oracle(
    autojump_clock: trio.abc.Clock, topology: Topology, min_fidelity: float, number: int
) -> None:
    """Each KEEP pair's fidelity_estimate, at each end, against the true fidelity read from the
    backend the moment the OK reaches the user (which is its estimate time: delivery and
    receipt happen at one virtual instant). The two ends estimate at different times (the
    slave later, by at least the classical delay), so each end is compared at its own time."""
    a, b = topology.links[0].a, topology.links[0].b
    request = CreateRequest(b, number=number, kind=Kind.KEEP, min_fidelity=min_fidelity)
    with trio.fail_after(BOUND_S):
        async with open_network(topology) as net:
            watch = await serve(net, a, b, [(a, request)], oracle=True)
    worst = 0.0
    for node in (a, b):
        seen = watch.keep_seen(node)
        assert len(seen) == number
        for s in seen:
            assert isinstance(s.event, PairOk)
            assert s.true_fidelity is not None
            assert s.time_ns == s.event.estimate_time_ns
            worst = max(worst, abs(s.event.fidelity_estimate - s.true_fidelity))
            # The pair meets the request at delivery, truly, not only by the estimate.
            assert s.true_fidelity >= min_fidelity - 0.01
    assert worst <= 0.01, worst
    if min_fidelity > 0.98:
        assert all(ok.bell_index == 0 for ok in watch.oks(a)), "purified pairs are Φ+"


# -- CHSH ---------------------------------------------------------------------------------------


async def test_chsh_on_link_pairs_matches_the_true_state(autojump_clock: trio.abc.Clock) -> None:
    """CHSH with KEEP pairs of two_nodes (single click): the master measures along Z or X,
    the slave along ±φ in the X–Z plane (RY(−θ) then Z measures cos θ·Z + sin θ·X).

    The single-click pair is ρ = λ[w|Ψ±⟩⟨Ψ±| + (1−w)|11⟩⟨11|] + (1−λ)I/4. Its correlations
    in the X–Z plane are T = diag(t_x, t_z) with t_z = ⟨ZZ⟩ = λ(1 − 2w) and t_x = ⟨XX⟩ = ±λw
    (the |11⟩ part adds ZZ = +1 and nothing to XX; ⟨ZX⟩ = ⟨XZ⟩ = 0 as ρ has no coherence
    between states that differ in one qubit, and memory noise creates none). Bell states
    diagonalise XX and ZZ, so t_z = F₀ + F₂ − F₁ − F₃ and t_x = F₀ + F₁ − F₂ − F₃ from the
    oracle's fidelities with the four Bell states, exactly. With a ∈ {0, π/2} and
    b = ±φ·sign(t_x), S = 2t_z cos φ + 2|t_x| sin φ, at most 2√(t_x² + t_z²) for
    φ = atan2(|t_x|, t_z); gate and measurement errors scale each correlator by
    (1−p₁)²(1−2e)². (A Werner pair of the same fidelity F ≈ 0.95 would predict
    2√2(4F−1)/3 ≈ 2.53 here; the true state gives ≈ 2.52.)"""
    topology = example("two_nodes")
    params = topology.node(A).params
    damp = (1 - params.gate_error_1q) ** 2 * (1 - 2 * params.measure_error) ** 2
    n = 3000
    phi: list[float] = []
    products: dict[int, list[int]] = {k: [] for k in range(4)}
    predicted: dict[int, list[float]] = {k: [] for k in range(4)}

    async def measure_chsh(net: SimNetwork, m: PairOk, s: PairOk) -> None:
        assert m.qubit is not None
        assert s.qubit is not None
        f = oracle_bell_weights(net, m.qubit, s.qubit)
        assert abs(f[0] - f[2]) < 1e-9, "|11⟩ should split evenly between Φ+ and Φ−"
        t_z, t_x = f[0] + f[2] - f[1] - f[3], f[0] + f[1] - f[2] - f[3]
        if not phi:
            phi.append(math.atan2(abs(t_x), t_z))
        setting = m.index_in_request % 4
        angle_a = (0.0, math.pi / 2)[setting // 2]
        angle_b = (1, -1)[setting % 2] * math.copysign(phi[0], t_x)
        await net.sessions[A].gate(GateName.RY, m.qubit, angle=-angle_a)
        await net.sessions[B].gate(GateName.RY, s.qubit, angle=-angle_b)
        out_a = await net.sessions[A].measure(m.qubit, Basis.Z)
        out_b = await net.sessions[B].measure(s.qubit, Basis.Z)
        products[setting].append(sign(out_a, out_b))
        correlation = math.cos(angle_a) * math.cos(angle_b) * t_z
        correlation += math.sin(angle_a) * math.sin(angle_b) * t_x
        predicted[setting].append(damp * correlation)

    request = CreateRequest(B, number=n, kind=Kind.KEEP, min_fidelity=0.95)
    with trio.fail_after(BOUND_S):
        async with open_network(topology) as net:
            await serve(net, A, B, [(A, request)], on_pair=measure_chsh)
    signs = (1, 1, 1, -1)  # S = E(a0,b0) + E(a0,b1) + E(a1,b0) − E(a1,b1)
    s_hat = s_pred = variance = 0.0
    for setting, sgn in enumerate(signs):
        mean, error = mean_and_error(products[setting])
        s_hat += sgn * mean
        s_pred += sgn * sum(predicted[setting]) / len(predicted[setting])
        variance += error**2
    bound = Z_SCORE * math.sqrt(variance)
    assert abs(s_hat - s_pred) <= bound, (s_hat, s_pred, bound)
    assert s_pred - bound > 2.0, "the prediction should violate CHSH beyond the error"
    assert s_hat > 2.0
