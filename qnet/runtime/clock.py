"""Physical time for drivers: the trio clock, scaled.

Physical nanoseconds = (trio time − start) × scale × 10⁹. Under trio's ``MockClock`` the same
driver runs on virtual time, which is how tests run daemon code without waiting.
"""

from __future__ import annotations

import math

import trio


class PhysicalClock:
    def __init__(self, scale: float = 1.0, *, start_ns: int = 0) -> None:
        """Physical time reads ``start_ns`` now (a node aligns its clock to the backend's)."""
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"time scale must be a positive number, got {scale!r}")
        self.scale = scale
        self._start = trio.current_time()
        self._start_ns = start_ns

    def now_ns(self) -> int:
        return self._start_ns + int((trio.current_time() - self._start) * self.scale * 1e9)

    def trio_time(self, ns: int) -> float:
        """The trio clock reading at which physical time reaches ``ns`` (never early)."""
        return self._start + (ns - self._start_ns) / (self.scale * 1e9) + 1e-9

    def trio_duration(self, ns: int) -> float:
        """Trio seconds that ``ns`` of physical time takes."""
        return ns / (self.scale * 1e9)

    @property
    def uptime_s(self) -> float:
        return trio.current_time() - self._start
