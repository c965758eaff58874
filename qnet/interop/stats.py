"""Statistics of the physics cases, with tolerances derived from the sample size.

A measured frequency k/n of an event expected with probability p is accepted when it lies
within ``SIGMAS`` binomial standard deviations of p, widened by an ``allowance`` for effects
the estimate being checked does not claim to cover. The variance is floored at that of one
event in n, so an expected probability of 0 still tolerates a stray count.

Bell-state conventions (channel.proto): index x + 2z for (I ⊗ X^x Z^z)|Φ+⟩. Measuring both
halves of Φ+ in the same basis, Z and X outcomes agree and Y outcomes differ. A pair in state
nominal ⊕ e with probability w[e] shows a Z error when e has x = 1 (e ∈ {1, 3}), an X error
when z = 1 (e ∈ {2, 3}) and a Y error when x ≠ z (e ∈ {1, 2}); a Werner pair of fidelity F
has w = (F, (1−F)/3, (1−F)/3, (1−F)/3), so an error probability 2(1−F)/3 in every basis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Standard deviations a statistical check allows (about one false failure in 16 000).
SIGMAS = 4.0

_ERROR_STATES = {"Z": (1, 3), "X": (2, 3), "Y": (1, 2)}


@dataclass(frozen=True, slots=True)
class Bound:
    """The accepted range of a frequency, and whether ``observed`` is in it."""

    observed: float
    expected: float
    low: float
    high: float

    @property
    def ok(self) -> bool:
        return self.low <= self.observed <= self.high

    def __str__(self) -> str:
        accepted = f"[{self.low:.3f}, {self.high:.3f}]"
        return f"{self.observed:.3f} (expected {self.expected:.3f}, accepted {accepted})"


def binomial_bound(k: int, n: int, p: float, *, allowance: float = 0.0) -> Bound:
    """Is ``k`` of ``n`` consistent with probability ``p``? (n ≥ 1)"""
    if n < 1:
        raise ValueError("no samples")
    p = min(max(p, 0.0), 1.0)
    sigma = math.sqrt(max(p * (1.0 - p), 1.0 / n) / n)
    margin = SIGMAS * sigma + allowance
    return Bound(k / n, p, max(0.0, p - margin), min(1.0, p + margin))


def werner_weights(fidelity: float) -> tuple[float, float, float, float]:
    rest = (1.0 - fidelity) / 3.0
    return (fidelity, rest, rest, rest)


def error_probability(weights: Sequence[float], basis: str) -> float:
    """Probability that same-basis outcomes break the nominal state's correlation."""
    return sum(weights[e] for e in _ERROR_STATES[basis])


def expected_disagreement(bell_index: int, basis: str) -> bool:
    """Whether same-basis outcomes of a pair in Bell state ``bell_index`` differ when there
    is no error."""
    x, z = bell_index & 1, bell_index >> 1
    if basis == "Z":
        return x == 1
    if basis == "X":
        return z == 1
    return x == z  # Y: Φ+ (x = z = 0) gives opposite outcomes


def fidelity_from_errors(errors: dict[str, float]) -> float:
    """Fidelity with the nominal Bell state from the error rates in Z, X and Y:
    F = (1 + c_X + c_Y + c_Z)/4 with c = 1 − 2·(error rate) the correlation with the nominal."""
    return (1.0 + sum(1.0 - 2.0 * errors[b] for b in ("X", "Y", "Z"))) / 4.0


def uniform_bound(counts: Sequence[int]) -> list[Bound]:
    """Each count against an equal share of the total."""
    n = sum(counts)
    return [binomial_bound(c, n, 1.0 / len(counts)) for c in counts]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
