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
