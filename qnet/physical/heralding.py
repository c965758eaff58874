"""Heralded entanglement generation at a midpoint station: rates, timing and the pair's state.

Single-click: each node emits with bright-state population α; one detector click heralds
|Ψ±⟩. Counting the events that click (non-number-resolving detectors, transmissivity η per arm):
    p = 2α(1−α)η + α²η(2−η) = αη(2 − αη)
and the heralded state is w|Ψ±⟩⟨Ψ±| + (1−w)|11⟩⟨11| with w = 2(1−α)/(2 − αη) ≈ 1 − α.
Double-click (Barrett–Kok): two rounds, each needs one photon from either node: p = η²/2, and
the heralded state is |Ψ±⟩ exactly. For both, the link's source fidelity then mixes the state
towards white noise (a Werner map), and each attempt lasts the local overhead plus the round
trip to the midpoint (two rounds for double-click). The number of attempts to success is
geometric, so one random draw replaces the whole run of failed attempts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from qnet.physical.gates import BELL_PROJECTORS, Matrix
from qnet.physical.params import FIBRE_LIGHT_SPEED_M_PER_S, LinkParams, Scheme

#: Bell indices a midpoint station heralds: Ψ+ and Ψ−, one per detector.
HERALDED_INDICES = (1, 3)

_ONE_ONE: Matrix = np.zeros((4, 4), dtype=np.complex128)
_ONE_ONE[3, 3] = 1.0
_WHITE: Matrix = np.eye(4, dtype=np.complex128) / 4


def fibre_delay_ns(length_km: float) -> int:
    """One-way light delay over ``length_km`` of fibre."""
    return round(length_km * 1e3 / FIBRE_LIGHT_SPEED_M_PER_S * 1e9)


def arm_transmissivity(params: LinkParams) -> float:
    """Probability that an emitted photon clicks at the midpoint: emission, half the fibre,
    detector."""
    loss_db = params.attenuation_db_per_km * params.length_km / 2
    return params.emission_efficiency * 10 ** (-loss_db / 10) * params.detector_efficiency


@dataclass(frozen=True, slots=True)
class HeraldingModel:
    """What one link does per attempt, at one bright-state setting."""

    success_probability: float
    cycle_ns: int
    #: From emission to the herald reaching the nodes: node → midpoint → node.
    flight_ns: int
    transmissivity: float
    bright_state: float  # 0 for double-click
    states: tuple[Matrix, ...]  # heralded density matrix for each Bell index (1 and 3 used)

    @property
    def rate_hz(self) -> float:
        """Expected pairs per second from one memory pair while it stays armed: p per cycle.
        Pairs attempt independently, so a link attempting with m pairs makes m times that."""
        return self.success_probability / (self.cycle_ns * 1e-9)

    def fidelity(self, bell_index: int = 1) -> float:
        """Fidelity of a fresh pair with the Bell state it is heralded as."""
        rho = self.states[bell_index]
        return float(np.real(np.trace(BELL_PROJECTORS[bell_index] @ rho)))

    def draw_attempts(self, rng: random.Random) -> int:
        """Attempts up to and including the first success (geometric, support 1, 2, …)."""
        p = self.success_probability
        if p >= 1.0:
            return 1
        u = 1.0 - rng.random()  # in (0, 1]
        return 1 + int(math.log(u) / math.log1p(-p))


def heralding_model(params: LinkParams, bright_state: float | None = None) -> HeraldingModel:
    eta = arm_transmissivity(params)
    flight = 2 * fibre_delay_ns(params.length_km / 2)
    lam = (4 * params.source_fidelity - 1) / 3
    if params.scheme is Scheme.SINGLE_CLICK:
        alpha = params.bright_state if bright_state is None else bright_state
        p = alpha * eta * (2 - alpha * eta)
        w = 2 * (1 - alpha) / (2 - alpha * eta)
        cycle = params.attempt_overhead_ns + flight
        raw = [w * BELL_PROJECTORS[i] + (1 - w) * _ONE_ONE for i in range(4)]
    else:
        alpha = 0.0
        p = eta * eta / 2
        cycle = 2 * (params.attempt_overhead_ns + flight)
        raw = list(BELL_PROJECTORS)
    states = tuple(lam * r + (1 - lam) * _WHITE for r in raw)
    return HeraldingModel(
        success_probability=p,
        cycle_ns=cycle,
        flight_ns=flight,
        transmissivity=eta,
        bright_state=alpha,
        states=states,
    )
