"""The arithmetic of key distillation, shared by both ends of ``qnet.apps.qkd``: sifting
masks, the QBER estimate and its bound, and the secret key length.

Both ends compute these from the same public data, so they agree without sending results;
each function is pure and unit-tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qnet.apps.cascade import binary_entropy
from qnet.apps.stats import Estimate, z_value
from qnet.apps.toeplitz import Bits
from qnet.errors import InvalidArgument

#: The QBER above which BB84/BBM92 with one-way post-processing yields no key (Shor–Preskill).
QBER_THRESHOLD = 0.11
#: Confidence of the one-sided upper bound on the QBER that privacy amplification assumes.
ESTIMATE_CONFIDENCE = 0.999
#: Privacy amplification's failure probability ε: 2·log₂(1/ε) bits are given up for it
#: (the leftover hash lemma).
PA_EPSILON = 1e-10
#: Bits of the Toeplitz hash that confirms the two keys agree after Cascade.
VERIFY_BITS = 64

KEY_BASES = ("Z", "X")


def bases_to_bits(bases: Sequence[str]) -> Bits:
    return np.fromiter((KEY_BASES.index(b) for b in bases), dtype=np.uint8, count=len(bases))


def failed_mask(outcomes: Sequence[int]) -> Bits:
    """1 where a measurement failed (outcome -1): such pairs carry no bit."""
    return np.fromiter((o < 0 for o in outcomes), dtype=np.uint8, count=len(outcomes))


def outcome_bits(outcomes: Sequence[int]) -> Bits:
    return np.fromiter((max(o, 0) for o in outcomes), dtype=np.uint8, count=len(outcomes))


def sift(my_bases: Bits, my_failed: Bits, their_bases: Bits, their_failed: Bits) -> Bits:
    """1 where both ends measured in the same basis and neither measurement failed."""
    if not my_bases.size == my_failed.size == their_bases.size == their_failed.size:
        raise InvalidArgument("sifting data of different lengths")
    keep: Bits = (my_bases == their_bases) & (my_failed == 0) & (their_failed == 0)
    return keep.astype(np.uint8)


def qber_estimate(errors: int, sample: int) -> Estimate:
    if sample < 1 or not 0 <= errors <= sample:
        raise InvalidArgument(f"{errors} errors in a sample of {sample}")
    q = errors / sample
    # A sample without errors still allows a rate of order 1/n.
    return Estimate(q, math.sqrt(max(q * (1 - q), 1 / sample) / sample))


def qber_upper_bound(estimate: Estimate, confidence: float = ESTIMATE_CONFIDENCE) -> float:
    """One-sided upper confidence bound on the QBER (normal approximation; a finite-key
    analysis would use a tighter tail bound such as Serfling's)."""
    return min(0.5, estimate.value + z_value(2 * confidence - 1) * estimate.stderr)


@dataclass(frozen=True)
class KeyLength:
    reconciled_bits: int
    qber_bound: float
    leaked_bits: int
    #: Bits given up for ε-security of privacy amplification.
    margin_bits: int
    secret_bits: int


def secret_key_length(
    reconciled_bits: int, qber_bound: float, leaked_bits: int, epsilon: float = PA_EPSILON
) -> KeyLength:
    """n·(1 − h(e)) − leak − 2·log₂(1/ε), the asymptotic Shor–Preskill rate with the
    reconciliation leakage counted as measured (Cascade's parities plus the verification
    hash) instead of its Shannon limit n·h(e), and the leftover-hash margin. h(e) of the
    phase-error rate is bounded by the QBER, which the symmetric basis choice makes equal in
    both bases."""
    if not 0 < epsilon < 1:
        raise InvalidArgument(f"epsilon must be in (0, 1), got {epsilon}")
    margin = math.ceil(2 * math.log2(1 / epsilon))
    secret = math.floor(reconciled_bits * (1 - binary_entropy(qber_bound))) - leaked_bits - margin
    return KeyLength(reconciled_bits, qber_bound, leaked_bits, margin, max(0, secret))


def werner_qber(pair_fidelity: float) -> float:
    """QBER of Z or X outcomes of a Werner pair of fidelity F: 2(1 − F)/3."""
    return 2 * (1 - pair_fidelity) / 3
