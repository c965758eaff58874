"""The run directory: state file, lock, stale state, PID checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qnet.daemon import procs
from qnet.daemon.launcher import clear_previous
from qnet.daemon.rundir import (
    CHANNEL_PROGRAM,
    NODE_PROGRAM,
    DaemonRecord,
    NetworkState,
    RunDir,
    default_run_dir,
    running_daemons,
)
from qnet.errors import AlreadyExists, FailedPrecondition


def _dead_pid() -> int:
    """A PID that is not running: the highest possible one is never in use in a test."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) - 1


def _state(*records: DaemonRecord) -> NetworkState:
    state = NetworkState(network="chain4", topology="/x/chain4.toml", time_scale=1.0)
    for r in records:
        if r.program == CHANNEL_PROGRAM:
            state.channel = r
        else:
            state.nodes[r.name] = r
    return state


def _me(name: str = "alice") -> DaemonRecord:
    pid = os.getpid()
    return DaemonRecord(name, NODE_PROGRAM, pid, procs.start_time(pid), f"/logs/{name}.log")


def _dead(name: str = "bob") -> DaemonRecord:
    return DaemonRecord(name, NODE_PROGRAM, _dead_pid(), 1, f"/logs/{name}.log", "h:1")


def test_state_round_trips(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    channel = DaemonRecord("channel", CHANNEL_PROGRAM, 10, 99, "/logs/channeld.log", "h:2")
    state = _state(channel, _me(), _dead())
    state.status = "up"
    rd.write_state(state)
    assert rd.read_state() == state
    assert [d.name for d in state.daemons()] == ["alice", "bob", "channel"]  # stop order
    rd.remove_state()
    assert rd.read_state() is None


def test_a_corrupt_state_file_is_named(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.state_file.write_text("{not json")
    with pytest.raises(FailedPrecondition, match=r"state.json is not a qnet state file"):
        rd.read_state()
    rd.state_file.write_text('{"version": 99}')
    with pytest.raises(FailedPrecondition, match="not a version-1 qnet state"):
        rd.read_state()


def test_the_lock_is_exclusive(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    busy = pytest.raises(FailedPrecondition, match="another `qnet up` or `qnet down`")
    with rd.lock(), busy, RunDir(tmp_path / "run").lock():
        pass
    with rd.lock():  # released again
        pass


def test_running_means_same_pid_and_start_time() -> None:
    me = _me()
    assert me.running()
    assert not DaemonRecord("x", NODE_PROGRAM, me.pid, (me.start_time or 0) + 1, "").running()
    assert not _dead().running()
    assert procs.resident_bytes() > 0
    assert procs.resident_bytes(_dead_pid()) == 0


def test_a_live_network_is_not_replaced(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.write_state(_state(_me(), _dead()))
    with pytest.raises(AlreadyExists, match=r"network 'chain4' is already running .* alice"):
        clear_previous(rd)
    assert rd.read_state() is not None
    assert [d.name for d in running_daemons(rd.read_state() or _state())] == ["alice"]


def test_a_stale_state_is_removed_with_a_note(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.write_state(_state(_dead("alice"), _dead("bob")))
    [note] = clear_previous(rd)
    assert "stale state of network 'chain4'" in note
    assert rd.read_state() is None
    assert clear_previous(rd) == []


def test_default_run_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QNET_RUN_DIR", raising=False)
    assert default_run_dir() == Path(".qnet-run")
    monkeypatch.setenv("QNET_RUN_DIR", "/tmp/elsewhere")
    assert default_run_dir() == Path("/tmp/elsewhere")


def test_held_qubit_leases_expire_in_delivery_order() -> None:
    from qnet.daemon.link_service import HeldQubit, expired

    held = {q: HeldQubit("bob", ("alice|bob", q), since=float(q)) for q in (1, 2, 3)}
    assert expired(held, 10.0, 30.0) == []
    assert expired(held, 32.0, 30.0) == [1, 2]
    assert expired(held, 100.0, 30.0) == [1, 2, 3]
