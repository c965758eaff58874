"""The launcher's handling of processes, with tiny stand-in processes instead of daemons:
readiness, a process that dies at start or stays silent, and `down` by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from qnet.daemon import launcher, procs
from qnet.daemon.rundir import NODE_PROGRAM, DaemonRecord, NetworkState, RunDir
from qnet.errors import Timeout, Unreachable

LIMIT_S = 20


def _launch(tmp_path: Path, timeout_s: float = 10.0) -> launcher._Launch:
    state = NetworkState(network="t", topology="/t.toml", time_scale=1.0)
    return launcher._Launch(RunDir(tmp_path), state, trio.current_time() + timeout_s)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_readiness_line_gives_the_address(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        launch = _launch(tmp_path)
        code = "import os; print(f'qnetd ready on 127.0.0.1:5 pid {os.getpid()}', flush=True)"
        child = await launch.spawn("alice", NODE_PROGRAM, _python(code))
        await launch.wait_ready(child)
        assert child.record.address == "127.0.0.1:5"
        recorded = RunDir(tmp_path).read_state()
        assert recorded is not None
        assert recorded.nodes["alice"].address == "127.0.0.1:5"
        assert recorded.nodes["alice"].pid == child.proc.pid
        await launch.stop_all()


async def test_a_daemon_that_dies_at_start_is_named_with_its_log(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        launch = _launch(tmp_path)
        code = "import sys; print('cannot bind 127.0.0.1:9', file=sys.stderr); sys.exit(3)"
        child = await launch.spawn("bob", NODE_PROGRAM, _python(code))
        with pytest.raises(Unreachable, match=r"qnetd bob exited \(code 3\).*cannot bind"):
            await launch.wait_ready(child)
        await launch.stop_all()


async def test_a_silent_daemon_times_out(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        launch = _launch(tmp_path, timeout_s=0.5)
        child = await launch.spawn("carol", NODE_PROGRAM, _python("import time; time.sleep(60)"))
        with pytest.raises(Timeout, match=r"qnetd carol \(pid \d+\) did not report ready"):
            await launch.wait_ready(child)
        await launch.stop_all()
        assert child.proc.returncode is not None


async def test_garbage_instead_of_the_readiness_line(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        launch = _launch(tmp_path)
        child = await launch.spawn("dave", NODE_PROGRAM, _python("print('hello')"))
        with pytest.raises(Unreachable, match="instead of its readiness line"):
            await launch.wait_ready(child)
        await launch.stop_all()


async def _detached(code: str) -> tuple[DaemonRecord, trio.Process]:
    """A stand-in daemon; the test reaps it at the end (``down`` knows it by PID only)."""
    proc = await trio.lowlevel.open_process(
        _python(code), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    await proc.stdout.receive_some(1)  # it has set up its signal handling
    record = DaemonRecord("n", NODE_PROGRAM, proc.pid, procs.start_time(proc.pid), "")
    return record, proc


async def test_down_stops_by_pid_and_kills_the_stubborn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "STOP_GRACE_S", 0.3)
    polite = "import time; print(1, flush=True); time.sleep(60)"
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print(1, flush=True); time.sleep(60)"
    )
    with trio.fail_after(LIMIT_S):
        a, pa = await _detached(polite)
        b, pb = await _detached(stubborn)
        state = NetworkState(network="t", topology="/t.toml", time_scale=1.0)
        state.nodes = {"a": a, "b": b}
        rd = RunDir(tmp_path)
        rd.write_state(state)
        result = await launcher.down(tmp_path)
        assert await pa.wait() == -signal.SIGTERM
        assert await pb.wait() == -signal.SIGKILL
        for p in (pa, pb):
            assert p.stdout is not None
            await p.stdout.aclose()
    assert result.network == "t"
    assert [d.pid for d in result.stopped] == [a.pid, b.pid]
    assert [d.pid for d in result.killed] == [b.pid]
    assert not a.running()
    assert not b.running()
    assert rd.read_state() is None


async def test_down_with_nothing_recorded(tmp_path: Path) -> None:
    result = await launcher.down(tmp_path)
    assert result.network is None


async def test_wait_exit_sees_an_exit_as_it_happens() -> None:
    with trio.fail_after(LIMIT_S):
        record, proc = await _detached("import time; print(1, flush=True); time.sleep(60)")
        assert not await procs.wait_exit(record.pid, 0.05, record.start_time)
        assert procs.send_signal(record.pid, signal.SIGTERM, record.start_time)
        assert await procs.wait_exit(record.pid, 10, record.start_time)
        assert not procs.send_signal(record.pid, signal.SIGTERM, record.start_time)
        assert await proc.wait() == -signal.SIGTERM
        assert proc.stdout is not None
        await proc.stdout.aclose()
