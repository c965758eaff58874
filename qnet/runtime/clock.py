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
        #: The running trio clock's own reading: ``trio.current_time`` goes through two more
        #: calls to reach it, and a node reads the time on nearly every input.
        self._read = trio.lowlevel.current_clock().current_time

    def now_ns(self) -> int:
        return self._at(self._read())

    def _at(self, trio_time: float) -> int:
        return self._start_ns + int((trio_time - self._start) * self.scale * 1e9)

    def trio_time(self, ns: int) -> float:
        """The earliest trio clock reading at which physical time reads ``ns``: never early,
        and not a nanosecond late either (a timer due at ``ns`` then fires at ``ns``, in
        order with everything else that happens then)."""
        t = self._start + (ns - self._start_ns) / (self.scale * 1e9)
        for _ in range(64):
            if self._at(t) >= ns:
                break
            t = math.nextafter(t, math.inf)
        else:
            t += 1e-9
        while self._at(math.nextafter(t, -math.inf)) >= ns:
            t = math.nextafter(t, -math.inf)
        return t

    def trio_duration(self, ns: int) -> float:
        """Trio seconds that ``ns`` of physical time takes."""
        return ns / (self.scale * 1e9)

    @property
    def uptime_s(self) -> float:
        return trio.current_time() - self._start
