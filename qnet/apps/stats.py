"""Estimates with uncertainties, from counted outcomes: what every application reports.

Each figure an application prints is an ``Estimate`` (value and standard error from the sample
it came from), so the CLI can print "0.93 ± 0.01" and the tests can compare against theory
with a tolerance that follows from the number of runs rather than a number written in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from qnet.errors import InvalidArgument

#: Two-sided confidence the applications report intervals at.
CONFIDENCE = 0.95


def z_value(confidence: float = CONFIDENCE) -> float:
    """Standard normal quantile for a two-sided interval of ``confidence``."""
    if not 0.0 < confidence < 1.0:
        raise InvalidArgument(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Estimate:
    value: float
    #: Standard error of ``value`` (one standard deviation of its sampling distribution).
    stderr: float

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        half = z_value(confidence) * self.stderr
        return self.value - half, self.value + half

    def sigmas_from(self, reference: float) -> float:
        """How many standard errors the value lies above ``reference``."""
        if self.stderr == 0:
            return math.inf if self.value > reference else -math.inf
        return (self.value - reference) / self.stderr

    def format(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} ± {self.stderr:.{digits}f}"

    def __add__(self, other: Estimate) -> Estimate:
        """Sum of independent estimates (errors add in quadrature)."""
        return Estimate(self.value + other.value, math.hypot(self.stderr, other.stderr))

    def scaled(self, factor: float, offset: float = 0.0) -> Estimate:
        return Estimate(factor * self.value + offset, abs(factor) * self.stderr)


def proportion(successes: int, trials: int) -> Estimate:
    """A probability estimated from ``successes`` out of ``trials`` (binomial standard
    error; with 0 or all successes it uses the rule-of-three bound 3/n rather than a
    meaningless 0)."""
    if trials < 1:
        raise InvalidArgument("a proportion needs at least one trial")
    if not 0 <= successes <= trials:
        raise InvalidArgument(f"{successes} successes out of {trials} trials")
    p = successes / trials
    se = math.sqrt(p * (1 - p) / trials)
    if successes in (0, trials):
        se = 3.0 / trials / 2  # half the width of the 95 % rule-of-three interval
    return Estimate(p, se)


def expectation(bits: Sequence[int] | Iterable[int]) -> Estimate:
    """⟨σ⟩ of a ±1 observable from outcome bits (0 ↦ +1, 1 ↦ −1): E = 1 − 2·mean, with
    standard error √((1 − E²)/n)."""
    values = list(bits)
    if not values:
        raise InvalidArgument("an expectation needs at least one outcome")
    if any(b not in (0, 1) for b in values):
        raise InvalidArgument("outcomes must be 0 or 1")
    n = len(values)
    e = 1.0 - 2.0 * sum(values) / n
    return Estimate(e, math.sqrt(max(1.0 - e * e, 1.0 / n) / n))


def mean(values: Sequence[float]) -> Estimate:
    """Sample mean with its standard error (sample standard deviation / √n)."""
    n = len(values)
    if n < 2:
        raise InvalidArgument("a mean with an error needs at least two values")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return Estimate(m, math.sqrt(var / n))
