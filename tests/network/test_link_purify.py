"""Purification (DEJMPS) in the link layer, on whole in-process networks.

A double-click link with source fidelity 0.8 and noiseless nodes heralds Ψ± mixed with white
noise: after the slave's Pauli correction, a Werner state of fidelity 0.8 around Φ+, whatever
the timing. Asking for more than 0.8 makes the link purify, and then the textbook DEJMPS map
(``estimate.dejmps_bell_diagonal``) predicts everything exactly: the probability that a round
succeeds and the state of the kept pair. Success rates are checked to Z_SCORE binomial standard
errors; the delivered state is read from the backend's oracle (exact), and also measured.
"""

from __future__ import annotations

import math

import numpy as np
import trio

from qnet.link import estimate
from qnet.link.events import CreateRequest, Kind, PairOk
from qnet.physical.gates import BELL_PROJECTORS, Basis
from qnet.physical.params import NodeParams
from qnet.sim import SimNetwork, open_network
from qnet.topology import Topology
from tests.network.linkhelpers import (
    Z_SCORE,
    bell_sign,
    binomial_bound,
    mean_and_error,
    oracle_bell_weights,
    serve,
    sign,
    two_nodes,
)

A, B = "alice", "bob"
BOUND_S = 60
RAW_FIDELITY = 0.8
#: Werner weights on (Φ+, Ψ+, Φ−, Ψ−) of a corrected raw pair.
_NOISE = (1 - RAW_FIDELITY) / 3
RAW = (RAW_FIDELITY, _NOISE, _NOISE, _NOISE)
EXACT = 1e-9


def purifying_link() -> Topology:
    return two_nodes(scheme="double_click", length_km=2.0, source_fidelity=RAW_FIDELITY)


def rounds_prediction(rounds: int) -> list[tuple[float, tuple[float, float, float, float]]]:
    """(success probability, output Bell weights) of each of ``rounds`` DEJMPS rounds, each on
    two outputs of the round before."""
    out = []
    weights = RAW
    for _ in range(rounds):
        p, weights = estimate.dejmps_bell_diagonal(weights, weights)
        out.append((p, weights))
    return out


async def test_one_round_raises_fidelity_as_dejmps_predicts(
    autojump_clock: trio.abc.Clock,
) -> None:
    """min_fidelity 0.83 > 0.8: one round per pair. The fraction of rounds that succeed is
    p = (A+B)² + (C+D)² ≈ 0.769 and every delivered pair is exactly the DEJMPS output state
    (F ≈ 0.838) at both ends; measured correlations in Z, X and Y give the same fidelity,
    F = (1 + ⟨XX⟩ − ⟨YY⟩ + ⟨ZZ⟩)/4 for Φ+."""
    [(p_success, weights)] = rounds_prediction(1)
    n = 600
    outcomes: dict[Basis, list[int]] = {basis: [] for basis in (Basis.Z, Basis.X, Basis.Y)}

    async def check_and_measure(net: SimNetwork, m: PairOk, s: PairOk) -> None:
        assert m.qubit is not None
        assert s.qubit is not None
        true = oracle_bell_weights(net, m.qubit, s.qubit)
        assert max(abs(t - w) for t, w in zip(true, weights, strict=True)) < EXACT
        basis = (Basis.Z, Basis.X, Basis.Y)[m.index_in_request % 3]
        out_m = await net.sessions[A].measure(m.qubit, basis)
        out_s = await net.sessions[B].measure(s.qubit, basis)
        outcomes[basis].append(sign(out_m, out_s) * bell_sign(0, basis))

    request = CreateRequest(B, number=n, kind=Kind.KEEP, min_fidelity=0.83)
    with trio.fail_after(BOUND_S):
        async with open_network(purifying_link()) as net:
            watch = await serve(net, A, B, [(A, request)], on_pair=check_and_measure)
            counters = net.node(A)._links[B].core.counters
            assert net.node(B)._links[A].core.counters["rounds"] == 0, "the master counts"
    assert len(watch.pairs) == n
    for m, s in watch.pairs:
        assert m.bell_index == s.bell_index == 0
        assert abs(m.fidelity_estimate - weights[0]) < 1e-6
        assert abs(s.fidelity_estimate - weights[0]) < 1e-6
    rounds, failed = counters["rounds"], counters["failed_rounds"]
    assert n <= rounds - failed <= n + 2  # a success or two may land after the request ended
    rate = 1 - failed / rounds
    assert abs(rate - p_success) <= binomial_bound(p_success, rounds), (rate, p_success)
    # Measured fidelity F = (1 + ⟨XX⟩ − ⟨YY⟩ + ⟨ZZ⟩)/4: the values carry Φ+'s signs already,
    # and each correlator is estimated from its own n/3 pairs, so their variances add.
    fidelity = 0.25
    variance = 0.0
    for values in outcomes.values():
        mean, error = mean_and_error(values)
        fidelity += 0.25 * mean
        variance += (0.25 * error) ** 2
    assert abs(fidelity - weights[0]) <= Z_SCORE * math.sqrt(variance), (fidelity, weights[0])
    assert weights[0] > RAW_FIDELITY


async def test_two_rounds_reach_the_second_dejmps_output(autojump_clock: trio.abc.Clock) -> None:
    """min_fidelity 0.9 is beyond one round (0.838): each delivered pair went through two,
    and is exactly the second round's output (F ≈ 0.944), requested from the slave's end.
    The master counts rounds of both levels together; a second-level round takes two
    first-level successes, so n₂ ≈ n₁p₁/2 and the overall success fraction is
    (p₁ + p₁p₂/2)/(1 + p₁/2)."""
    (p1, _), (p2, weights) = rounds_prediction(2)
    n = 100
    seen: list[tuple[float, ...]] = []

    async def check(net: SimNetwork, m: PairOk, s: PairOk) -> None:
        assert m.qubit is not None
        assert s.qubit is not None
        seen.append(oracle_bell_weights(net, m.qubit, s.qubit))
        await net.sessions[A].free([m.qubit])
        await net.sessions[B].free([s.qubit])

    request = CreateRequest(A, number=n, kind=Kind.KEEP, min_fidelity=0.9)
    with trio.fail_after(BOUND_S):
        async with open_network(purifying_link()) as net:
            watch = await serve(net, A, B, [(B, request)], on_pair=check)
            counters = net.node(A)._links[B].core.counters
    assert len(seen) == n
    for true in seen:
        assert max(abs(t - w) for t, w in zip(true, weights, strict=True)) < EXACT
    for m, s in watch.pairs:
        assert m.bell_index == s.bell_index == 0
        assert abs(m.fidelity_estimate - weights[0]) < 1e-6
        assert abs(s.fidelity_estimate - weights[0]) < 1e-6
    rounds = counters["rounds"]
    rate = 1 - counters["failed_rounds"] / rounds
    mix = (p1 + p1 * p2 / 2) / (1 + p1 / 2)
    assert abs(rate - mix) <= binomial_bound(mix, rounds), (rate, mix, rounds)


async def test_with_measurement_errors_the_estimate_averages_the_hidden_branch(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With measurement error e at both ends, a round is kept when the *reported* outcomes
    agree: either the true outcomes agreed (the kept pair is the ideal DEJMPS output, F_good)
    or they differed and one report was flipped (F_bad). Neither end can tell which, so the
    link layer's estimate is their mixture, (1−q)F_good + qF_bad with q the flipped share of
    successes, while each pair is truly one or the other. Both branches come from
    ``estimate.dejmps``: with e = 0 it sums the agreeing outcomes; with e > 0 it weighs them
    by (1−e)² + e² and the differing ones by 2e(1−e)."""
    e = 0.05
    werner = RAW_FIDELITY * BELL_PROJECTORS[0] + (1 - RAW_FIDELITY) / 3 * (
        np.eye(4, dtype=np.complex128) - BELL_PROJECTORS[0]
    )
    p_agree, rho_agree = estimate.dejmps(werner, werner, NodeParams(), NodeParams())
    noisy = NodeParams(measure_error=e)
    p_kept, rho_kept = estimate.dejmps(werner, werner, noisy, noisy)
    same, differ = (1 - e) ** 2 + e**2, 2 * e * (1 - e)
    flipped = (p_kept * rho_kept - same * p_agree * rho_agree) / differ  # unnormalised
    p_differ = float(np.real(np.trace(flipped)))
    assert abs(p_differ - (1 - p_agree)) < EXACT
    f_good = estimate.pair_fidelity(rho_agree, 0)
    f_bad = estimate.pair_fidelity(flipped / p_differ, 0)
    q = differ * p_differ / p_kept
    f_estimate = estimate.pair_fidelity(rho_kept, 0)
    assert abs((1 - q) * f_good + q * f_bad - f_estimate) < EXACT

    n = 400
    truths: list[float] = []

    async def check(net: SimNetwork, m: PairOk, s: PairOk) -> None:
        assert m.qubit is not None
        assert s.qubit is not None
        truths.append(net.core.oracle_pair_fidelity(m.qubit, s.qubit, 0, net.now()))
        await net.sessions[A].free([m.qubit])
        await net.sessions[B].free([s.qubit])

    topology = two_nodes(
        scheme="double_click", length_km=2.0, source_fidelity=RAW_FIDELITY, measure_error=e
    )
    request = CreateRequest(B, number=n, kind=Kind.KEEP, min_fidelity=0.81)
    with trio.fail_after(BOUND_S):
        async with open_network(topology) as net:
            watch = await serve(net, A, B, [(A, request)], on_pair=check)
            counters = net.node(A)._links[B].core.counters
    for m, s in watch.pairs:
        assert abs(m.fidelity_estimate - f_estimate) < 1e-6
        assert abs(s.fidelity_estimate - f_estimate) < 1e-6
    bad = 0
    for truth in truths:
        assert min(abs(truth - f_good), abs(truth - f_bad)) < EXACT, truth
        bad += abs(truth - f_bad) < EXACT
    assert abs(bad / n - q) <= binomial_bound(q, n), (bad, n, q)
    rate = 1 - counters["failed_rounds"] / counters["rounds"]
    assert abs(rate - p_kept) <= binomial_bound(p_kept, counters["rounds"]), (rate, p_kept)


async def test_purification_delivers_at_the_planned_rate(autojump_clock: trio.abc.Clock) -> None:
    """Noiseless memories, small gate errors, single click, source fidelity 0.99 and
    min_fidelity 0.99: two rounds per pair. The delivered rate should be near the plan's
    rate_hz (with one-qubit gate error 0 it is: 581 Hz against 580 planned)."""
    n = 10
    topology = two_nodes(source_fidelity=0.99, gate_error_1q=1e-4, gate_error_2q=1e-3)
    request = CreateRequest(B, number=n, kind=Kind.KEEP, min_fidelity=0.99)
    with trio.fail_after(BOUND_S):
        async with open_network(topology) as net:
            start = net.now()
            watch = await serve(net, A, B, [(A, request)])
            elapsed_s = (net.now() - start) * 1e-9
            plan = net.node(A)._links[B].core.requests[A, 1].plan
    assert len(watch.pairs) == n
    assert plan.rounds == 2
    # The time to n pairs is a sum of n waits: its spread is well within a factor 2 here.
    assert n / elapsed_s >= plan.rate_hz / 2, (n / elapsed_s, plan.rate_hz)
