"""The applications end to end on ``qnet.sim`` (virtual clock), against the physics.

Topologies here give Werner pairs (double-click heralding, a source of known fidelity) and
noiseless local operations, so each application's model, computed from the stack's pair
fidelity estimate, is exact; the measured figure must agree with it within
``SIGMAS`` standard errors of its sample, and clear its classical bound.
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
import trio

from qnet.api.aio import AsyncNode
from qnet.apps.bloch import parse_state
from qnet.apps.chsh import LOCAL_BOUND, chsh
from qnet.apps.cnot import distributed_cnot, expected_truth_table
from qnet.apps.distill import werner_qber
from qnet.apps.errors import QberTooHigh
from qnet.apps.ghz import ghz
from qnet.apps.grover import GUESS, expected_success, grover
from qnet.apps.qkd import QkdOptions, qkd
from qnet.apps.teleport import CLASSICAL_BOUND, teleport
from qnet.sim import open_network
from qnet.topology import Topology, load_topology
from tests.network.circuithelpers import chain

#: Agreement with a model within 4 standard errors: a false alarm about once in 16 000.
SIGMAS = 4.0
SOURCE_FIDELITY = 0.95
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _werner(nodes: int = 2, source_fidelity: float = SOURCE_FIDELITY) -> Topology:
    return chain(nodes, source_fidelity=source_fidelity, length_km=2.0)


def _binomial_sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


async def _with_nodes(
    topology: Topology, names: list[str], stack: AsyncExitStack
) -> list[AsyncNode]:
    net = await stack.enter_async_context(open_network(topology))
    return [await stack.enter_async_context(net.open_node(n)) for n in names]


async def test_teleport_tomography_matches_werner_model(autojump_clock: trio.abc.Clock) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _with_nodes(_werner(), ["n0", "n1"], stack)
        states = [parse_state(s) for s in ("+", "1", "-i")]
        result = await teleport(a, b, states=states, rounds=60, seed=3)
    assert result.teleported == 180
    assert result.pair_fidelity == pytest.approx(SOURCE_FIDELITY, abs=0.02)
    # Each state's fidelity sample against (2F+1)/3 of the stack's pair estimate.
    for r in result.per_state:
        sigma = math.sqrt((1 - result.expected) * result.expected / 20)  # 60 shots, 20 per basis
        assert abs(r.fidelity.value - result.expected) <= SIGMAS * sigma, r
    assert result.beats_classical
    assert result.fidelity.interval()[0] > CLASSICAL_BOUND


async def test_chsh_violates_the_local_bound(autojump_clock: trio.abc.Clock) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _with_nodes(_werner(), ["n0", "n1"], stack)
        result = await chsh(a, b, pairs=400, seed=5)
    assert result.violates
    assert result.s.value > LOCAL_BOUND
    assert abs(result.s.value - result.expected) <= SIGMAS * result.s.stderr


@pytest.mark.parametrize("protocol", ["bbm92", "bb84"])
async def test_qkd_distils_equal_keys_and_sends_a_file(
    autojump_clock: trio.abc.Clock, protocol: str
) -> None:
    data = bytes(range(256)) * 40
    async with AsyncExitStack() as stack:
        # A better source than elsewhere: fewer errors leave a key from fewer pairs.
        a, b = await _with_nodes(_werner(source_fidelity=0.97), ["n0", "n1"], stack)
        result = await qkd(
            a, b, options=QkdOptions(protocol=protocol, pairs=2000), seed=11,
            file_name="data.bin", file_data=data,
        )  # fmt: skip
    assert result.keys_agree
    assert result.final_bits >= 128
    assert result.file.data == data
    assert result.file.name == "data.bin"
    # Werner pairs and noiseless detectors: QBER = 2(1−F)/3, within the sample's spread.
    model = werner_qber(result.pair_fidelity)
    sigma = _binomial_sigma(model, result.sample)
    assert abs(result.qber.value - model) <= SIGMAS * sigma
    # Half the pairs survive sifting (two bases at random), within the binomial spread.
    assert abs(result.sifted - result.pairs / 2) <= SIGMAS * math.sqrt(result.pairs / 4)
    assert result.final_bits < result.length.reconciled_bits
    assert result.rate_bps > 0


async def test_qkd_aborts_on_a_noisy_network(autojump_clock: trio.abc.Clock) -> None:
    topology = load_topology(EXAMPLES / "noisy_pair.toml")
    spec = topology.nodes[0].params
    source = topology.links[0].params.source_fidelity
    # What the topology promises: Werner pairs read by detectors that each flip with p.
    flip = 2 * spec.measure_error * (1 - spec.measure_error)
    expected = werner_qber(source) * (1 - flip) + (1 - werner_qber(source)) * flip
    options = QkdOptions(pairs=1200, sample_fraction=0.5)
    sample = 1200 // 2 // 2
    assert expected - SIGMAS * _binomial_sigma(expected, sample) > options.qber_threshold
    async with AsyncExitStack() as stack:
        a, b = await _with_nodes(topology, ["alice", "bob"], stack)
        with pytest.raises(QberTooHigh) as aborted:
            await qkd(a, b, options=options, seed=2, min_fidelity=0.8)
    assert aborted.value.qber > options.qber_threshold
    assert "above the 11% threshold" in str(aborted.value)


async def test_ghz_witness_proves_genuine_entanglement(autojump_clock: trio.abc.Clock) -> None:
    async with AsyncExitStack() as stack:
        centre, left, right = await _with_nodes(_werner(3), ["n1", "n0", "n2"], stack)
        result = await ghz(centre, [left, right], rounds=200)
    assert result.qubits == 3
    assert result.genuinely_entangled
    assert result.witness.value < 0
    assert abs(result.fidelity.value - result.expected) <= SIGMAS * result.fidelity.stderr


async def test_distributed_cnot_truth_table_and_bell_state(autojump_clock: trio.abc.Clock) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _with_nodes(_werner(), ["n0", "n1"], stack)
        result = await distributed_cnot(a, b, rounds=30, bell_rounds=60)
    model = expected_truth_table(result.pair_fidelity)
    assert abs(result.truth_table.value - model) <= SIGMAS * _binomial_sigma(model, 120)
    # The control never changes, and the most frequent output is the right one, per input.
    for (c, t), row in result.counts.items():
        assert all(out[0] == c for out in row)
        assert max(row, key=lambda o: row[o]) == (c, t ^ c)
    assert result.bell_fidelity.interval()[0] > 0.5
    assert abs(result.bell_fidelity.value - result.pair_fidelity) <= (
        SIGMAS * result.bell_fidelity.stderr
    )


async def test_grover_finds_each_marked_item(autojump_clock: trio.abc.Clock) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _with_nodes(_werner(), ["n0", "n1"], stack)
        result = await grover(a, b, runs=40)
    model = expected_success(result.pair_fidelity, result.pair_fidelity)
    assert abs(result.overall.value - model) <= SIGMAS * _binomial_sigma(model, result.runs)
    for item, success in result.success.items():
        assert success.interval()[0] > GUESS, item
    assert np.isclose(sum(sum(r.values()) for r in result.counts.values()), result.runs)
