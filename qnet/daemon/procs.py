"""Daemon processes by PID: are they running, how much memory, wait for their exit, signal them.

The launcher's daemons outlive it, so it cannot ``wait()`` for them as children; it knows them
by PID and by the kernel's start time of that PID (``/proc/PID/stat`` field 22), which tells a
daemon from an unrelated process that got its PID later. A zombie (exited, not yet reaped by
its parent or init) counts as gone: it runs nothing and holds no port.

Waiting for an exit uses a pidfd (Linux ≥ 5.3), which becomes readable when the process ends:
a real event, not a poll. Without pidfd support it falls back to checking every 20 ms.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

import trio

_POLL_S = 0.02


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def is_running(pid: int, started: int | None = None) -> bool:
    """``pid`` exists, has not exited, and (if ``started`` is given) is the same process."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        # No /proc (not Linux): fall back to the signal check, which cannot see zombies.
        if Path("/proc/self/stat").exists():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def resident_bytes(pid: int | None = None) -> int:
    """VmRSS of ``pid`` (default: this process) in bytes; 0 where unknown."""
    try:
        text = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) >= 2 and parts[1].isdigit() else 0
    return 0


def send_signal(pid: int, signum: signal.Signals, started: int | None = None) -> bool:
    """Signal ``pid`` if it is still the process we started; False if it is gone."""
    if not is_running(pid, started):
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


async def wait_exit(pid: int, timeout_s: float, started: int | None = None) -> bool:
    """Wait up to ``timeout_s`` for ``pid`` to exit; True once it has (or was gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ESRCH:
            return True
        return await _poll_exit(pid, timeout_s, started)
    try:
        with trio.move_on_after(timeout_s):
            # A zombie's pidfd is readable at once; a live process's when it exits.
            await trio.lowlevel.wait_readable(fd)
            return True
        return not is_running(pid, started)
    finally:
        with contextlib.suppress(OSError):
            trio.lowlevel.notify_closing(fd)
        os.close(fd)


async def _poll_exit(pid: int, timeout_s: float, started: int | None) -> bool:
    # No pidfd on this system: a bounded poll is all there is.
    with trio.move_on_after(timeout_s):
        while is_running(pid, started):  # noqa: ASYNC110
            await trio.sleep(_POLL_S)
        return True
    return False
