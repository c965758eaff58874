"""Single-qubit states on the Bloch sphere: naming them, preparing them on a node, and
state tomography from X, Y and Z measurements.

A state is (θ, φ): cos(θ/2)|0⟩ + e^{iφ} sin(θ/2)|1⟩, Bloch vector
(sin θ cos φ, sin θ sin φ, cos θ). It is prepared from |0⟩ by RY(θ) then RZ(φ) (the global
phase RZ adds does not matter).

Tomography by linear inversion: each Bloch component sᵦ = ⟨σᵦ⟩ is the mean of ±1 outcomes in
basis β; the fidelity of the measured state with the pure target r is F = (1 + r·s)/2.
For random states (a different target every round) one outcome per state is all there is;
then, measuring each in a basis β chosen uniformly from X, Y, Z, f = (1 + 3·rᵦ·m)/2 with
m = ±1 is an unbiased single-shot estimate of that state's fidelity (E[3 rᵦ m] = Σᵦ rᵦ sᵦ),
and their mean is the average fidelity, with the standard error of a mean.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from qnet.api.aio import AsyncQubit
from qnet.apps.stats import Estimate, expectation, mean
from qnet.errors import InvalidArgument

BASES = ("X", "Y", "Z")

#: The six cardinal states by the names physicists write.
NAMED_STATES: dict[str, tuple[float, float]] = {
    "0": (0.0, 0.0),
    "1": (math.pi, 0.0),
    "+": (math.pi / 2, 0.0),
    "-": (math.pi / 2, math.pi),
    "+i": (math.pi / 2, math.pi / 2),
    "-i": (math.pi / 2, -math.pi / 2),
}


@dataclass(frozen=True)
class BlochState:
    theta: float
    phi: float
    label: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.theta) and math.isfinite(self.phi)):
            raise InvalidArgument(f"θ and φ must be finite, got {self.theta}, {self.phi}")

    @property
    def vector(self) -> tuple[float, float, float]:
        st = math.sin(self.theta)
        return (st * math.cos(self.phi), st * math.sin(self.phi), math.cos(self.theta))

    def component(self, basis: str) -> float:
        return self.vector[BASES.index(basis)]

    @property
    def name(self) -> str:
        return self.label or f"θ={self.theta:.3f},φ={self.phi:.3f}"

    async def prepare(self, qubit: AsyncQubit) -> None:
        """Rotate a qubit in |0⟩ into this state."""
        if self.theta:
            await qubit.ry(self.theta)
        if self.phi:
            await qubit.rz(self.phi)


def parse_state(text: str) -> BlochState:
    """A named state ("0", "1", "+", "-", "+i", "-i") or "θ,φ" in radians."""
    spec = text.strip()
    if spec in NAMED_STATES:
        theta, phi = NAMED_STATES[spec]
        return BlochState(theta, phi, spec)
    parts = spec.split(",")
    if len(parts) == 2:
        try:
            return BlochState(float(parts[0]), float(parts[1]))
        except ValueError:
            pass
    known = ", ".join(repr(k) for k in NAMED_STATES)
    raise InvalidArgument(f"unknown state {text!r}: use one of {known} or 'theta,phi' (radians)")


def random_state(rng: random.Random) -> BlochState:
    """A state drawn uniformly (Haar) from the Bloch sphere."""
    return BlochState(math.acos(1 - 2 * rng.random()), 2 * math.pi * rng.random(), "random")


@dataclass
class Tomography:
    """Outcomes of one target state measured in X, Y and Z."""

    target: BlochState
    outcomes: dict[str, list[int]] = field(default_factory=lambda: {b: [] for b in BASES})

    def add(self, basis: str, outcome: int) -> None:
        self.outcomes[basis].append(outcome)

    @property
    def shots(self) -> int:
        return sum(len(v) for v in self.outcomes.values())

    def bloch_vector(self) -> tuple[Estimate, Estimate, Estimate]:
        missing = [b for b in BASES if not self.outcomes[b]]
        if missing:
            raise InvalidArgument(f"tomography has no outcome in basis {', '.join(missing)}")
        x, y, z = (expectation(self.outcomes[b]) for b in BASES)
        return x, y, z

    def fidelity(self) -> Estimate:
        """F = (1 + r·s)/2; the components are independent samples, so errors add in
        quadrature weighted by the target's components."""
        s = self.bloch_vector()
        r = self.target.vector
        value = (1 + sum(ri * si.value for ri, si in zip(r, s, strict=True))) / 2
        err = math.sqrt(sum((ri * si.stderr) ** 2 for ri, si in zip(r, s, strict=True))) / 2
        return Estimate(value, err)


def single_shot_fidelity(target: BlochState, basis: str, outcome: int) -> float:
    """Unbiased one-outcome estimate of the fidelity with ``target`` (see the module doc)."""
    m = 1 - 2 * outcome
    return (1 + 3 * target.component(basis) * m) / 2


def average_fidelity(samples: list[float]) -> Estimate:
    return mean(samples)
