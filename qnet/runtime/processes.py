"""Child daemon processes: start one, wait for its readiness line, stop it without leaks.

A daemon announces readiness with one stdout line ``<program> ready on HOST:PORT pid N``; the
parent waits for that line (bounded), never for a sleep. Stopping is SIGTERM, then SIGKILL if
the process has not exited within the grace period, and always a wait, so no zombie is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from qnet.errors import Unreachable

READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ChildDaemon:
    address: str
    pid: int
    log_path: Path


async def _read_ready_line(proc: trio.Process, program: str) -> str:
    assert proc.stdout is not None
    buf = b""
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace")
    words = line.split()
    if len(words) < 4 or words[1:3] != ["ready", "on"]:
        raise Unreachable(f"{program} printed {line!r} instead of its readiness line")
    return words[3]


def _temp_log(program: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"qnet-{program}-", suffix=".log")
    os.close(fd)
    return Path(name)


def _append(path: Path) -> BinaryIO:
    # The child writes its stderr here directly; the parent only needs the descriptor briefly.
    return path.open("ab")


async def stop_process(proc: trio.Process, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; always reaps the process."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.terminate()
            with trio.move_on_after(grace_s):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def start_daemon(
    module: str,
    args: list[str],
    *,
    log_path: Path | None = None,
    task_status: trio.TaskStatus[ChildDaemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``python -m module args`` until cancelled; ``task_status.started`` gets its address
    once it is ready. A daemon that dies or stays silent at start raises ``Unreachable`` with
    the end of its log."""
    program = module.rsplit(".", 1)[-1]
    log_path = log_path or _temp_log(program)
    with _append(log_path) as log:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                address = await _read_ready_line(proc, program)
        except (EOFError, trio.TooSlowError):
            await stop_process(proc)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise Unreachable(
                f"{program} did not become ready (exit code {proc.returncode});"
                f" log {log_path}: " + " | ".join(tail)
            ) from None
        task_status.started(ChildDaemon(address, proc.pid, log_path))
        await proc.wait()
        raise Unreachable(f"{program} (pid {proc.pid}) exited with code {proc.returncode}")
    finally:
        await stop_process(proc)
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def start_channeld(
    args: list[str],
    *,
    log_path: Path | None = None,
    task_status: trio.TaskStatus[ChildDaemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a qnet-channeld child process until cancelled."""
    await start_daemon("qnet.daemons.channeld", args, log_path=log_path, task_status=task_status)
