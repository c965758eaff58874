"""Toeplitz hashing, the two-universal family used for privacy amplification.

An m×n Toeplitz matrix over GF(2) is fixed by its first column and first row, n + m − 1 bits
(the seed): T[i, j] = seed[i − j + n − 1]. Hashing is the matrix-vector product mod 2. The
product is a slice of the convolution of the seed with the key, which an FFT computes in
O((n + m) log(n + m)) instead of building the m×n matrix: for the 10⁴–10⁵-bit keys of a run
that is the difference between milliseconds and seconds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qnet.errors import InvalidArgument

Bits = npt.NDArray[np.uint8]


def as_bits(values: object, name: str = "bits") -> Bits:
    """A 1-D array of 0/1 values; anything else is an ``InvalidArgument`` naming ``name``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InvalidArgument(f"{name} must be a 1-D sequence of bits, got shape {array.shape}")
    if array.size and (
        not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 1
    ):
        raise InvalidArgument(f"{name} must hold only 0 and 1")
    return array.astype(np.uint8)


def seed_length(n: int, m: int) -> int:
    """Bits of seed an m×n Toeplitz matrix needs."""
    return n + m - 1


def toeplitz_matrix(seed: object, m: int, n: int) -> Bits:
    """The m×n matrix itself (for checking and small cases)."""
    s = _checked_seed(seed, m, n)
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    matrix: Bits = s[i - j + n - 1]
    return matrix


def toeplitz_hash(key: object, seed: object, m: int) -> Bits:
    """T·key mod 2 for the m×len(key) Toeplitz matrix of ``seed``: m output bits."""
    x = as_bits(key, "key")
    n = x.size
    s = _checked_seed(seed, m, n)
    if m == 0:
        return np.zeros(0, dtype=np.uint8)
    # y[i] = Σ_j s[i − j + n − 1]·x[j] = (s ∗ x)[i + n − 1]. Every sum is an integer ≤ n, far
    # below where float64 FFT rounding could reach ±0.5, so rounding recovers it exactly.
    size = 1 << (s.size + n - 1).bit_length()
    conv = np.fft.irfft(np.fft.rfft(s, size) * np.fft.rfft(x, size), size)
    counts = np.rint(conv[n - 1 : n - 1 + m]).astype(np.int64)
    return (counts & 1).astype(np.uint8)


def _checked_seed(seed: object, m: int, n: int) -> Bits:
    if m < 0 or n < 1:
        raise InvalidArgument(f"a Toeplitz matrix needs m ≥ 0 and n ≥ 1, got {m}×{n}")
    s = as_bits(seed, "seed")
    if s.size != seed_length(n, m):
        raise InvalidArgument(
            f"a {m}×{n} Toeplitz matrix needs a seed of {seed_length(n, m)} bits, got {s.size}"
        )
    return s
