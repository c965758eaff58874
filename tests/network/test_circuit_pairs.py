"""End-to-end pairs over circuits in qnet.sim: delivery, the Pauli frame, physics, estimates."""

from __future__ import annotations

import math
import random

import pytest
import trio

from qnet.network.circuit_events import CloseCode
from qnet.network.routing_spf import path_fidelity
from qnet.physical.gates import GateName
from qnet.sim import SimNetwork, open_network
from qnet.topology import parse_topology
from tests.network.circuithelpers import Delivered, chain, idle, measure_pair, run_circuit, until
from tests.network.linkhelpers import Z_SCORE, example, mean_and_error


def assert_nothing_held(net: SimNetwork) -> None:
    """No circuit state, reservation or qubit is left anywhere."""
    for name, node in net.nodes.items():
        core = node.circuits.core
        assert core.circuits() == {}, name
        assert core.reserved == 0, name
        assert net.core.memory_in_use(name) == node.memory_in_use(), name


@pytest.mark.parametrize("hops", [1, 2, 3, 5, 9])
async def test_pairs_arrive_at_both_ends_in_order_corrected_to_phi_plus(
    autojump_clock: trio.abc.Clock, hops: int
) -> None:
    """Noiseless links: every delivered pair is exactly Φ+, so any error in the Pauli frame
    or in matching pairs between the ends would show as a wrong state."""
    number = 12
    async with open_network(chain(hops + 1, source_fidelity=1.0)) as net:
        with trio.fail_after(60):
            run = await run_circuit(net, "n0", f"n{hops}", number=number)
        assert [p.index for p in run.pairs] == list(range(number))
        assert run.head_closed is not None
        assert run.head_closed.code is CloseCode.COMPLETED
        assert run.tail_closed is not None
        assert run.tail_closed.code is CloseCode.COMPLETED
        for pair in run.pairs:
            assert pair.true_weights[0] == pytest.approx(1.0, abs=1e-9)
            assert pair.head.fidelity_estimate == pytest.approx(1.0, abs=1e-9)
        with trio.fail_after(5):
            await until(net, lambda: idle(net))
        assert_nothing_held(net)


@pytest.mark.parametrize("hops", [2, 5])
async def test_fidelity_is_the_werner_swap_formula(
    autojump_clock: trio.abc.Clock, hops: int
) -> None:
    """Double-click links with a Werner source: every end-to-end pair has exactly the
    fidelity of the swap formula applied hop after hop, and the estimate says so."""
    f = 0.95
    async with open_network(chain(hops + 1, source_fidelity=f)) as net:
        with trio.fail_after(60):
            run = await run_circuit(net, "n0", f"n{hops}", number=10, min_fidelity=0.6)
        expected = path_fidelity([f] * hops)
        for pair in run.pairs:
            assert pair.true_weights[0] == pytest.approx(expected, abs=1e-9)
            assert pair.head.fidelity_estimate == pytest.approx(expected, abs=1e-9)
            assert pair.tail.fidelity_estimate == pytest.approx(expected, abs=1e-9)


async def test_z_and_x_correlations_match_the_predicted_state(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Over 3 hops with noisy gates and measurements: ⟨ZZ⟩ and ⟨XX⟩ of the delivered pairs
    agree with the weights the ends predicted."""
    topology = chain(
        4, source_fidelity=0.97, gate_error_1q=1e-3, gate_error_2q=5e-3, measure_error=0.01
    )
    results: dict[str, list[int]] = {"Z": [], "X": []}
    predicted: dict[str, list[float]] = {"Z": [], "X": []}

    async def measure(net: SimNetwork, pair: Delivered) -> None:
        basis = "Z" if pair.index % 2 == 0 else "X"
        w = pair.head.weights
        predicted[basis].append(
            w[0] + w[2] - w[1] - w[3] if basis == "Z" else w[0] + w[1] - w[2] - w[3]
        )
        results[basis].append(await measure_pair(net, pair, None if basis == "Z" else GateName.H))

    async with open_network(topology) as net:
        with trio.fail_after(120):
            await run_circuit(net, "n0", "n3", number=600, min_fidelity=0.6, on_pair=measure)
    for basis in ("Z", "X"):
        mean, err = mean_and_error([float(v) for v in results[basis]])
        expect = sum(predicted[basis]) / len(predicted[basis])
        # The measured outcome itself is flipped with the measure error at each end, and the
        # H before an X measurement depolarises its qubit with the 1-qubit gate error.
        expect *= (1 - 2 * 0.01) ** 2
        if basis == "X":
            expect *= (1 - 1e-3) ** 2
        assert abs(mean - expect) <= Z_SCORE * err + 1e-3, (basis, mean, expect, err)


async def test_chsh_across_three_hops(autojump_clock: trio.abc.Clock) -> None:
    """S of the delivered pairs beats 2 and matches 2√2·w of the predicted Werner parameter."""
    topology = chain(4, source_fidelity=0.99)
    rng = random.Random(5)
    samples: dict[tuple[int, int], list[int]] = {(a, b): [] for a in (0, 1) for b in (0, 1)}
    angles_a = (0.0, math.pi / 2)
    angles_b = (math.pi / 4, -math.pi / 4)
    w_pred: list[float] = []

    async def chsh(net: SimNetwork, pair: Delivered) -> None:
        a, b = rng.randrange(2), rng.randrange(2)
        w_pred.append((4 * pair.head.fidelity_estimate - 1) / 3)
        outcomes = []
        for node, qubit, theta in (
            (pair.tail.remote, pair.head.qubit, angles_a[a]),
            (pair.head.remote, pair.tail.qubit, angles_b[b]),
        ):
            session = net.sessions[node]
            # Measuring along angle θ in the X–Z plane: rotate it onto Z first.
            await session.gate(GateName.RY, qubit, angle=-theta)
            outcomes.append(await session.measure(qubit))
        samples[a, b].append(1 - 2 * (outcomes[0] ^ outcomes[1]))

    async with open_network(topology) as net:
        with trio.fail_after(120):
            await run_circuit(net, "n0", "n3", number=800, on_pair=chsh, oracle=False)
    s = 0.0
    var = 0.0
    for (a, b), values in samples.items():
        mean, err = mean_and_error([float(v) for v in values])
        s += -mean if (a, b) == (1, 1) else mean
        var += err**2
    sigma = math.sqrt(var)
    theory = 2 * math.sqrt(2) * sum(w_pred) / len(w_pred)
    assert s > 2 + Z_SCORE * sigma, (s, sigma)
    assert abs(s - theory) < Z_SCORE * sigma, (s, theory, sigma)


async def test_estimates_agree_with_the_oracle_on_a_noisy_network(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Single-click links, T1/T2 memories, gate and measurement noise (examples/diamond.toml):
    each end's estimate is within 0.02 of the true fidelity of the delivered pair."""
    async with open_network(example("diamond")) as net:
        with trio.fail_after(120):
            run = await run_circuit(net, "alice", "bob", number=40, min_fidelity=0.7)
    assert len(run.pairs) == 40
    for pair in run.pairs:
        assert abs(pair.head.fidelity_estimate - pair.true_weights[0]) <= 0.02
        assert pair.true_weights[0] >= 0.7 - 0.02


async def test_cutoff_discards_pairs_that_waited_too_long(autojump_clock: trio.abc.Clock) -> None:
    """With short-lived memories and slow links, intermediate nodes discard stale pairs, the
    ends are told, nothing waits forever, and delivered pairs still meet the target."""
    topology = chain(4, length_km=40.0, t2_s=0.05, source_fidelity=0.99, memory_qubits=8)
    async with open_network(topology) as net:
        with trio.fail_after(300):
            run = await run_circuit(net, "n0", "n3", number=20, min_fidelity=0.75)
        cutoffs = sum(n.circuits.core.counters["cutoff_discards"] for n in net.nodes.values())
        assert cutoffs > 0
        assert len(run.pairs) == 20
        for pair in run.pairs:
            assert pair.true_weights[0] >= 0.75 - 0.02
            assert abs(pair.head.fidelity_estimate - pair.true_weights[0]) <= 0.02
        with trio.fail_after(5):
            await until(net, lambda: idle(net))
        assert_nothing_held(net)


async def test_a_fast_link_cannot_starve_the_slow_side_of_a_repeater(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The repeater's memory is exactly what the circuit reserves (two qubits a side). Its
    short link makes pairs far faster than its long one: were the short link free to arm all
    of the memory, its pairs would wait for partners the long link never gets a qubit for."""
    topology = parse_topology(
        """
[network]
name = "lopsided"
seed = 5
[defaults.node]
memory_qubits = 4
[defaults.link]
scheme = "double_click"
source_fidelity = 0.99
[[node]]
name = "n0"
[[node]]
name = "n1"
[[node]]
name = "n2"
[[link]]
between = ["n0", "n1"]
length_km = 40
[[link]]
between = ["n1", "n2"]
length_km = 1
"""
    )
    async with open_network(topology) as net:
        # 0.06 s of virtual time here; 12 s when the short link could take all the memory.
        with trio.fail_after(1.0):
            run = await run_circuit(net, "n0", "n2", number=10, min_fidelity=0.5)
        assert [p.index for p in run.pairs] == list(range(10))
        assert net.nodes["n1"].circuits.core.counters["swaps"] >= 10
