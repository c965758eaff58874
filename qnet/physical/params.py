"""Physical parameters of nodes and links, each with its unit in its name and a range check.

A value out of range is refused with an ``InvalidArgument`` that names the field, the value and
the allowed range; defaults follow DESIGN.md §5 (0.2 dB/km fibre, light at 2·10^8 m/s in fibre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum

from qnet.errors import InvalidArgument

#: Speed of light in fibre, metres per second.
FIBRE_LIGHT_SPEED_M_PER_S = 2.0e8
#: Most memory pairs one link may attempt with at once: no node holds more qubits than this.
MAX_MULTIPLEXING = 100_000


class Scheme(Enum):
    SINGLE_CLICK = "single_click"
    DOUBLE_CLICK = "double_click"


def _check(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise InvalidArgument(f"{name} must be in {bracket}{lo}, {hi}], got {value!r}")


@dataclass(frozen=True, slots=True)
class NodeParams:
    """Memory and operation noise of a node. A time or rate of 0 disables that noise."""

    memory_qubits: int = 8
    t1_s: float = 0.0
    t2_s: float = 0.0
    memory_depolar_rate_hz: float = 0.0
    gate_error_1q: float = 0.0
    gate_error_2q: float = 0.0
    measure_error: float = 0.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.memory_qubits, int)
            or isinstance(self.memory_qubits, bool)
            or not 1 <= self.memory_qubits <= 100_000
        ):
            raise InvalidArgument(
                f"memory_qubits must be an integer in [1, 100000], got {self.memory_qubits!r}"
            )
        _check("t1_s", self.t1_s, 0.0, 1e9)
        _check("t2_s", self.t2_s, 0.0, 1e9)
        _check("memory_depolar_rate_hz", self.memory_depolar_rate_hz, 0.0, 1e12)
        _check("gate_error_1q", self.gate_error_1q, 0.0, 1.0)
        _check("gate_error_2q", self.gate_error_2q, 0.0, 1.0)
        _check("measure_error", self.measure_error, 0.0, 0.5)
        if self.t1_s > 0 and self.t2_s > 2 * self.t1_s:
            raise InvalidArgument(
                f"t2_s must be at most 2·t1_s (physical limit), got t1_s={self.t1_s},"
                f" t2_s={self.t2_s}"
            )

    @property
    def noisy_memory(self) -> bool:
        return self.t1_s > 0 or self.t2_s > 0 or self.memory_depolar_rate_hz > 0


@dataclass(frozen=True, slots=True)
class LinkParams:
    """A fibre link with a heralding station at its midpoint."""

    length_km: float = 10.0
    attenuation_db_per_km: float = 0.2
    scheme: Scheme = Scheme.SINGLE_CLICK
    detector_efficiency: float = 0.9
    emission_efficiency: float = 1.0
    source_fidelity: float = 1.0
    bright_state: float = 0.1
    attempt_overhead_ns: int = 1000
    #: How many armed memory-qubit pairs attempt at the same time (several emitters, or a
    #: multimode memory): the i-th armed qubit at one end with the i-th at the other, for the
    #: first ``multiplexing`` of them.
    multiplexing: int = 1

    def __post_init__(self) -> None:
        _check("length_km", self.length_km, 0.0, 20_000.0)
        _check("attenuation_db_per_km", self.attenuation_db_per_km, 0.0, 10.0)
        _check("detector_efficiency", self.detector_efficiency, 0.0, 1.0, lo_open=True)
        _check("emission_efficiency", self.emission_efficiency, 0.0, 1.0, lo_open=True)
        _check("source_fidelity", self.source_fidelity, 0.25, 1.0)
        check_bright_state(self.bright_state)
        if not isinstance(self.scheme, Scheme):
            raise InvalidArgument(f"scheme must be one of {[s.value for s in Scheme]}")
        if (
            not isinstance(self.attempt_overhead_ns, int)
            or not 1 <= self.attempt_overhead_ns <= 10**12
        ):
            raise InvalidArgument(
                f"attempt_overhead_ns must be an integer in [1, 1e12], got"
                f" {self.attempt_overhead_ns!r}"
            )
        if (
            not isinstance(self.multiplexing, int)
            or isinstance(self.multiplexing, bool)
            or not 1 <= self.multiplexing <= MAX_MULTIPLEXING
        ):
            raise InvalidArgument(
                f"multiplexing must be an integer in [1, {MAX_MULTIPLEXING}] (memory pairs"
                f" attempting at once), got {self.multiplexing!r}"
            )

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_bright_state(alpha: float) -> None:
    _check("bright_state", alpha, 0.0, 0.5, lo_open=True)
