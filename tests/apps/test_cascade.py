"""Cascade reconciliation: it corrects keys at the error rates QKD runs at, counts every
parity it reveals, and refuses malformed schedules and requests."""

from __future__ import annotations

import numpy as np
import pytest

from qnet.apps.cascade import CascadeSchedule, binary_entropy, reconcile
from qnet.apps.toeplitz import Bits
from qnet.errors import InvalidArgument

N = 4000
#: Original Cascade leaks 1.1–1.3 times the Shannon limit n·h(Q) at these error rates
#: (Martinez-Mateo, Pacher, Peev, Ciurana & Martin, QIC 2015, fig. 4); 1.5 leaves room for a
#: sample's spread while still catching a Cascade that revealed far more than it needed.
MAX_EFFICIENCY = 1.5


def _keys(qber: float, seed: int) -> tuple[Bits, Bits]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, N).astype(np.uint8)
    errors = (rng.random(N) < qber).astype(np.uint8)
    return alice, alice ^ errors


@pytest.mark.parametrize("qber", [0.01, 0.03, 0.06, 0.1])
async def test_corrects_every_error_and_counts_leakage(qber: float) -> None:
    alice, bob = _keys(qber, seed=int(qber * 1000))
    schedule = CascadeSchedule.plan(N, qber, seed=7)
    answered: list[int] = []

    async def ask(blocks: list[tuple[int, int, int]]) -> list[int]:
        answered.append(len(blocks))
        return schedule.parities(alice, blocks)

    result = await reconcile(bob, schedule, ask)
    assert np.array_equal(result.key, alice)
    assert result.corrected == int(np.count_nonzero(alice != bob))
    # Every parity Alice gave away is counted, once.
    assert result.leaked_bits == sum(answered)
    assert result.rounds == len(answered)
    actual = np.count_nonzero(alice != bob) / N
    assert N * binary_entropy(actual) <= result.leaked_bits
    assert result.leaked_bits <= MAX_EFFICIENCY * N * binary_entropy(actual)


async def test_identical_keys_cost_only_the_top_level_parities() -> None:
    alice, _ = _keys(0.0, seed=1)
    schedule = CascadeSchedule.plan(N, 0.02, seed=3)

    async def ask(blocks: list[tuple[int, int, int]]) -> list[int]:
        return schedule.parities(alice, blocks)

    result = await reconcile(alice.copy(), schedule, ask)
    assert result.corrected == 0
    assert result.leaked_bits == sum(len(schedule.top_blocks(p)) for p in range(schedule.passes))


def test_block_sizes_follow_the_qber() -> None:
    schedule = CascadeSchedule.plan(N, 0.05, seed=0, passes=4)
    assert schedule.block_sizes == (15, 30, 60, 120)  # ⌈0.73/0.05⌉, then doubling
    # Both ends build the same permutations from the shared seed; pass 0 keeps the order.
    again = CascadeSchedule.plan(N, 0.05, seed=0, passes=4)
    assert all(np.array_equal(schedule.permutation(p), again.permutation(p)) for p in range(4))
    assert np.array_equal(schedule.permutation(0), np.arange(N))


def test_bad_schedules_and_requests_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="QBER"):
        CascadeSchedule.plan(N, 0.6, seed=0)
    with pytest.raises(InvalidArgument, match="pass"):
        CascadeSchedule.plan(N, 0.05, seed=0, passes=0)
    schedule = CascadeSchedule.plan(100, 0.05, seed=0)
    for bad in ([9, 0, 4], [0, 5, 5], [0, 0, 101], [0, 1]):
        with pytest.raises(InvalidArgument, match="block"):
            schedule.check_block(bad)
