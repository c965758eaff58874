"""What a driver's timer task sleeps on: a trio cancel scope, or an alarm of the running clock
when it keeps them (``qnet.sim``'s ``JumpClock`` rings its own, cheaper than a cancel scope
that raises ``Cancelled``). Either way, setting ``deadline`` moves the wake-up."""

from __future__ import annotations

from typing import Protocol, cast

import trio


class Sleep(Protocol):
    deadline: float


class Alarm(Sleep, Protocol):
    async def wait(self) -> None: ...


def clock_alarm() -> Alarm | None:
    """An alarm of the running trio clock if it keeps any (``qnet.sim.JumpClock``)."""
    make = getattr(trio.lowlevel.current_clock(), "alarm", None)
    return None if make is None else cast(Alarm, make())


class Wakeup:
    """A timer task's sleep that other code may move: while the task sleeps in ``until``,
    ``sleep`` is what to set ``deadline`` on (None while it runs)."""

    def __init__(self) -> None:
        self.sleep: Sleep | None = None
        self._alarm: Alarm | None = None
        self._looked = False

    async def until(self, at: float) -> None:
        """Sleep until trio time ``at``, or until someone moves ``sleep.deadline``."""
        if not self._looked:  # the clock is the running one's: known only inside trio
            self._alarm, self._looked = clock_alarm(), True
        alarm = self._alarm
        try:
            if alarm is None:
                with trio.CancelScope(deadline=at) as scope:
                    self.sleep = scope
                    await trio.sleep_forever()
            else:
                alarm.deadline = at
                self.sleep = alarm
                await alarm.wait()
        finally:
            self.sleep = None
