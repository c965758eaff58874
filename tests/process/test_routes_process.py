"""Routing with real daemon processes: `qnet up` returns with every table complete, `qnet
routes` shows them, a daemon killed with SIGKILL leaves the other nodes' tables within the
convergence bound, and `qnet restart` brings its routes back.

One diamond network serves the module; the tests run in order (kill, then restart). As in
test_qnet_up, the pytest process is the child subreaper while the module runs, and the
module's teardown stops every recorded PID whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from qnet.daemon.control import open_daemon_client
from qnet.daemon.launcher import restart
from qnet.daemon.report import gather_routes
from qnet.daemon.rundir import RunDir
from qnet.errors import InvalidArgument, NotFound
from qnet.network.routing_config import convergence_bound_ns
from qnet.node.routing_setup import routing_config
from qnet.topology import load_topology
from qnet.v1 import node_pb2 as pb
from tests.process.test_qnet_up import (
    ROOT,
    Network,
    _kill_leftovers,
    _reap,
    _recorded_pids,
    _set_subreaper,
    qnet,
)

pytestmark = pytest.mark.process

DIAMOND = ROOT / "examples" / "diamond.toml"
#: One-way delay of a routing message between two daemons, generously, on a loaded machine.
HOP_DELAY_NS = 100_000_000


def _bound_s() -> float:
    """The routing convergence bound for diamond (k = 2 hops) at HOP_DELAY_NS, in seconds."""
    config = routing_config(load_topology(DIAMOND).routing, 1.0)
    return convergence_bound_ns(config, 2, HOP_DELAY_NS) / 1e9


@pytest.fixture(scope="module")
def diamond(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    run_dir = tmp_path_factory.mktemp("qnet-run")
    subreaper = _set_subreaper(True)
    try:
        up = qnet("up", DIAMOND, "--run-dir", run_dir)
        assert up.returncode == 0, up.stderr
        state = json.loads((run_dir / "state.json").read_text())
        yield Network(run_dir, up, state, subreaper)
    finally:
        pids = _recorded_pids(run_dir)
        qnet("down", "--run-dir", run_dir)
        _kill_leftovers(pids)
        if subreaper:
            _set_subreaper(False)


def _state(run_dir: Path) -> dict[str, dict[str, dict[str, object]]]:
    state: dict[str, dict[str, dict[str, object]]] = json.loads(
        (run_dir / "state.json").read_text()
    )
    return state


def _rows(output: str) -> dict[str, list[str]]:
    """`qnet routes` table rows by destination: next hop, then the path's nodes, …"""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("DESTINATION"))
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("neighbours:"):
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_up_waits_for_complete_routes(diamond: Network) -> None:
    assert "healthy, linked and routed" in diamond.up.stdout
    result = qnet("routes", "alice", "--run-dir", diamond.run_dir)
    assert result.returncode == 0, result.stderr
    assert "routes of alice (network diamond): converged;" in result.stdout
    rows = _rows(result.stdout)
    assert set(rows) == {"r1", "r2", "bob"}
    assert rows["bob"][:4] == ["r1", "alice", "r1", "bob"]  # the 5 km links, not the 8 km ones
    assert rows["r2"][:3] == ["r2", "alice", "r2"]
    assert "neighbours: r1 up, r2 up" in result.stdout
    status = qnet("status", "--run-dir", diamond.run_dir)
    assert status.stdout.count("converged") == 4


async def _without(address: str, victim: str) -> pb.RoutesResponse:
    """Follow a node's routing state until no route passes ``victim``."""
    async with open_daemon_client(address) as client:
        routes = await client.routes()
        while any(victim in r.path for r in routes.routes):
            routes = await client.routes(after_version=routes.version, timeout_s=_bound_s())
    return routes


async def test_a_killed_daemon_leaves_every_table_within_the_bound(diamond: Network) -> None:
    nodes = _state(diamond.run_dir)["nodes"]
    pid = int(str(nodes["r1"]["pid"]))
    tables: dict[str, pb.RoutesResponse] = {}

    async def watch(node: str) -> None:
        tables[node] = await _without(str(nodes[node]["address"]), "r1")

    started = time.monotonic()
    with trio.fail_after(_bound_s()):
        async with trio.open_nursery() as nursery:
            os.kill(pid, signal.SIGKILL)
            for node in ("alice", "r2", "bob"):
                nursery.start_soon(watch, node)
    took = time.monotonic() - started
    assert took < _bound_s()
    if diamond.subreaper:
        _reap(pid)
    alice = {r.destination: list(r.path) for r in tables["alice"].routes}
    assert alice == {"r2": ["alice", "r2"], "bob": ["alice", "r2", "bob"]}
    assert {r.destination for r in tables["bob"].routes} == {"alice", "r2"}
    result = qnet("routes", "alice", "--run-dir", diamond.run_dir)
    assert _rows(result.stdout)["bob"][:4] == ["r2", "alice", "r2", "bob"]
    assert "r1 down" in result.stdout
    assert "differs from the topology" in result.stdout


async def _complete_everywhere(run_dir: Path) -> dict[str, pb.RoutesResponse]:
    """Every node's routing state (`qnet restart` returned only once all were complete)."""
    out = {}
    for node, record in _state(run_dir)["nodes"].items():
        async with open_daemon_client(str(record["address"])) as client:
            out[node] = await client.routes()
    return out


def test_restart_brings_the_routes_back(diamond: Network) -> None:
    old = _state(diamond.run_dir)["nodes"]["r1"]
    result = qnet("restart", "r1", "--run-dir", diamond.run_dir)
    assert result.returncode == 0, result.stderr
    assert "r1 started again (it was not running)" in result.stdout
    new = _state(diamond.run_dir)["nodes"]["r1"]
    assert new["pid"] != old["pid"]
    assert new["argv"] == old["argv"]
    tables = trio.run(_complete_everywhere, diamond.run_dir)
    assert all(t.converged and t.complete for t in tables.values())
    for node, dest, via in (("alice", "bob", "r1"), ("bob", "alice", "r1"), ("r2", "r1", "alice")):
        assert {r.destination: r.next_hop for r in tables[node].routes}[dest] == via
    shown = qnet("routes", "alice", "--run-dir", diamond.run_dir)
    assert "differs" not in shown.stdout
    assert _rows(shown.stdout)["bob"][:4] == ["r1", "alice", "r1", "bob"]
    assert "neighbours: r1 up, r2 up" in shown.stdout
    # Restarting a running daemon stops it first.
    again = qnet("restart", "r1", "--run-dir", diamond.run_dir)
    assert again.returncode == 0, again.stderr
    assert "r1 restarted" in again.stdout
    if diamond.subreaper:
        _reap(int(str(new["pid"])))
    assert all(t.complete for t in trio.run(_complete_everywhere, diamond.run_dir).values())


async def test_restart_and_routes_refuse_an_unknown_node(diamond: Network) -> None:
    with pytest.raises(InvalidArgument, match="no node 'carol'"):
        await restart(diamond.run_dir, "carol")
    state = RunDir(diamond.run_dir).read_state()
    assert state is not None
    with pytest.raises(NotFound, match="no node 'carol'"):
        await gather_routes(state, "carol")
