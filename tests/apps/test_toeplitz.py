"""Toeplitz hashing: the FFT product equals the matrix-vector product mod 2."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.apps.toeplitz import seed_length, toeplitz_hash, toeplitz_matrix
from qnet.errors import InvalidArgument


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(0, 200), st.integers(0, 2**32 - 1))
def test_hash_is_the_matrix_vector_product(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    key = rng.integers(0, 2, n).astype(np.uint8)
    s = rng.integers(0, 2, seed_length(n, m)).astype(np.uint8)
    matrix = toeplitz_matrix(s, m, n)
    assert matrix.shape == (m, n)
    expected = (matrix.astype(np.int64) @ key) % 2
    out = toeplitz_hash(key, s, m)
    assert out.size == m
    assert np.array_equal(out, expected)


def test_matrix_is_constant_along_diagonals() -> None:
    rng = np.random.default_rng(5)
    m, n = 7, 11
    matrix = toeplitz_matrix(rng.integers(0, 2, seed_length(n, m)), m, n)
    for i in range(1, m):
        assert np.array_equal(matrix[i, 1:], matrix[i - 1, :-1])


def test_long_keys_stay_exact() -> None:
    # Sums up to n pass through float64 FFTs: check a key as long as a QKD run's.
    rng = np.random.default_rng(9)
    n, m = 20_000, 257
    key = np.ones(n, dtype=np.uint8)
    s = rng.integers(0, 2, seed_length(n, m)).astype(np.uint8)
    expected = (toeplitz_matrix(s, m, n).astype(np.int64).sum(axis=1)) % 2
    assert np.array_equal(toeplitz_hash(key, s, m), expected)


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="seed of 14 bits"):
        toeplitz_hash(np.zeros(10, dtype=np.uint8), np.zeros(3, dtype=np.uint8), 5)
    with pytest.raises(InvalidArgument, match="only 0 and 1"):
        toeplitz_hash([0, 2, 1], [0] * 5, 3)
