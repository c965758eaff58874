"""`qnet interop` against our own daemons: examples/interop.toml brought up with `qnet up`, its
two spec-peer slots freed (their daemons stopped), the whole suite run, then one case alone.

As in tests/process, the pytest process is the child subreaper while the network runs, and the
teardown stops every recorded PID whatever happens. Every case must pass; none may be
unsupported, since the topology gives the spec peer both its slots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.process.test_qnet_up import (
    ROOT,
    _kill_leftovers,
    _reap,
    _recorded_pids,
    _set_subreaper,
    qnet,
)

pytestmark = pytest.mark.process

TOPOLOGY = ROOT / "examples" / "interop.toml"
SLOTS = ("a0-spec", "zz-spec")
#: Bound on one whole run of the suite (its cases take about 15 s here when the machine is idle).
SUITE_TIMEOUT_S = 75


def interop(
    *args: str | Path, timeout_s: float = SUITE_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`qnet interop ARGS`; one that overruns is made to dump its threads' stacks (SIGABRT
    with faulthandler on) before the test fails, so a hang says where it hangs."""
    env = {k: v for k, v in os.environ.items() if k != "QNET_RUN_DIR"}
    env["PYTHONFAULTHANDLER"] = "1"
    argv = [sys.executable, "-m", "qnet", "interop", *map(str, args)]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"{' '.join(argv)} did not finish in {timeout_s} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@contextmanager
def network_with_free_slots(topology: Path, path: Path) -> Iterator[Path]:
    """`qnet up TOPOLOGY` in run directory ``path`` with the spec-peer slots' daemons stopped;
    on leaving, `qnet down` and every recorded PID stopped, whatever happened."""
    subreaper = _set_subreaper(True)
    try:
        up = qnet("up", topology, "--run-dir", path)
        assert up.returncode == 0, up.stderr
        nodes = json.loads((path / "state.json").read_text())["nodes"]
        stop = qnet("stop", *SLOTS, "--run-dir", path)
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.split("\n")[:2] == [f"{slot} stopped" for slot in SLOTS]
        if subreaper:
            for slot in SLOTS:
                _reap(int(nodes[slot]["pid"]))
        yield path
    finally:
        pids = _recorded_pids(path)
        qnet("down", "--run-dir", path)
        _kill_leftovers(pids)
        if subreaper:
            _set_subreaper(False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with network_with_free_slots(TOPOLOGY, tmp_path_factory.mktemp("qnet-run")) as path:
        yield path


def test_every_case_passes_against_our_daemons(run_dir: Path, tmp_path: Path) -> None:
    junit = tmp_path / "interop.xml"
    listed = interop("--list")
    ids = [line.split()[0] for line in listed.stdout.splitlines()]
    assert len(ids) >= 20
    result = interop("--run-dir", run_dir, "--junit", junit)
    out = result.stdout + result.stderr
    assert "spec-peer slots: a0-spec (at alice), zz-spec (at alice)" in out
    matrix = next(
        line for line in out.splitlines() if line.startswith("interop: ") and "cases" not in line
    )
    assert matrix == "interop: " + " ".join("P" * len(ids)), out
    assert result.returncode == 0, out
    root = ET.parse(junit).getroot()
    assert root.get("tests") == str(len(ids))
    assert (root.get("failures"), root.get("skipped")) == ("0", "0")
    assert [tc.get("name") for tc in root.iter("testcase")] == ids
    # The daemons are still serving after everything the suite threw at them.
    status = qnet("status", "--run-dir", run_dir)
    for node in ("alice", "r1", "r2", "bob"):
        row = next(line for line in status.stdout.splitlines() if line.startswith(node + " "))
        assert "exited" not in row, status.stdout


def test_one_case_alone(run_dir: Path) -> None:
    result = interop("--run-dir", run_dir, "--case", "peer.duplicate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "interop: P\n" in result.stdout
    assert "peer.duplicate" in result.stdout
    assert "link.keep" not in result.stdout
    unknown = interop("--run-dir", run_dir, "--case", "no.such-case")
    assert unknown.returncode != 0
    assert "unknown case no.such-case" in unknown.stderr
