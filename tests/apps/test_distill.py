"""Key-distillation arithmetic and the statistics helpers every application reports with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qnet.apps.bloch import parse_state, single_shot_fidelity
from qnet.apps.distill import (
    qber_estimate,
    qber_upper_bound,
    secret_key_length,
    sift,
    werner_qber,
)
from qnet.apps.stats import expectation, proportion
from qnet.errors import InvalidArgument


def test_sifting_keeps_matching_bases_that_did_not_fail() -> None:
    mine = np.array([0, 1, 0, 1, 0], dtype=np.uint8)
    theirs = np.array([0, 1, 1, 1, 0], dtype=np.uint8)
    my_failed = np.array([0, 0, 0, 1, 0], dtype=np.uint8)
    no_fail = np.zeros(5, dtype=np.uint8)
    assert sift(mine, my_failed, theirs, no_fail).tolist() == [1, 1, 0, 0, 1]


def test_key_length_is_the_entropy_bound_minus_leakage() -> None:
    n, leaked = 10_000, 1_500
    q = qber_estimate(300, 10_000)
    bound = qber_upper_bound(q)
    assert bound > q.value
    h = -bound * math.log2(bound) - (1 - bound) * math.log2(1 - bound)
    length = secret_key_length(n, bound, leaked, epsilon=2**-40)
    assert length.margin_bits == 80
    assert length.secret_bits == math.floor(n * (1 - h)) - leaked - 80
    # At the 11 % limit nothing is left after realistic leakage.
    assert secret_key_length(n, 0.11, int(1.2 * n * 0.5), 1e-10).secret_bits == 0


def test_werner_qber_and_estimates() -> None:
    assert werner_qber(1.0) == 0.0
    assert werner_qber(0.25) == pytest.approx(0.5)
    e = expectation([0] * 75 + [1] * 25)
    assert e.value == pytest.approx(0.5)
    assert e.stderr == pytest.approx(math.sqrt(0.75 / 100))
    assert proportion(0, 50).stderr > 0  # no false certainty from a clean sample
    with pytest.raises(InvalidArgument):
        expectation([0, 2])


def test_states_parse_and_single_shot_estimator_is_exact_for_pure_states() -> None:
    plus = parse_state("+")
    assert plus.vector == pytest.approx((1, 0, 0))
    assert parse_state("-i").vector == pytest.approx((0, -1, 0))
    assert parse_state("0.5,1.0").theta == 0.5
    with pytest.raises(InvalidArgument, match="unknown state"):
        parse_state("up")
    # Averaged over the three bases with outcome probabilities of the state itself, the
    # single-shot estimator gives fidelity 1 for a perfect channel.
    state = parse_state("1.1,0.3")
    total = 0.0
    for i, basis in enumerate("XYZ"):
        p0 = (1 + state.vector[i]) / 2
        total += p0 * single_shot_fidelity(state, basis, 0)
        total += (1 - p0) * single_shot_fidelity(state, basis, 1)
    assert total / 3 == pytest.approx(1.0)
