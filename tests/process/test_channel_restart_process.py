"""qnet-channeld killed under a running network (`qnet up examples/two_nodes.toml`).

The backend holds every qubit, so losing it ends every node's quantum state: an application
streaming pairs gets ``qnet.errors.Unreachable`` (typed) within END_BOUND_S, each daemon exits
saying which backend it lost, and `qnet restart --channel` starts the backend and every node
again, after which an application gets pairs and messages as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio

import qnet
from qnet.daemon import procs
from qnet.errors import Unreachable
from tests.process.test_circuits_process import END_BOUND_S, _up
from tests.process.test_faults_process import _exchange, _killed_mid_stream
from tests.process.test_qnet_up import ROOT, Network, _reap
from tests.process.test_qnet_up import qnet as run_qnet
from tests.process.test_routes_process import _state

pytestmark = pytest.mark.process

TWO_NODES = ROOT / "examples" / "two_nodes.toml"
#: Wall seconds for a daemon to notice the backend is gone and exit.
EXIT_BOUND_S = 10.0


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from _up(TWO_NODES, tmp_path_factory)


async def test_a_killed_backend_ends_the_nodes_and_restart_brings_them_back(
    network: Network,
) -> None:
    run = str(network.run_dir)
    before = _state(network.run_dir)
    channel_pid = int(str(before["channel"]["pid"]))
    node_pids = {n: int(str(d["pid"])) for n, d in before["nodes"].items()}
    with trio.fail_after(60):
        async with (
            qnet.open_node("alice", run_dir=run) as alice,
            qnet.open_node("bob", run_dir=run) as bob,
        ):
            async with _killed_mid_stream(alice, bob, channel_pid) as kill:
                pass
            for end in (kill.head, kill.tail):
                assert isinstance(end.error, Unreachable), end
            ended = max(kill.head.failed_at, kill.tail.failed_at) - kill.at
            assert ended <= END_BOUND_S + EXIT_BOUND_S
        for name, pid in node_pids.items():
            assert await procs.wait_exit(pid, EXIT_BOUND_S), f"{name} still runs"
        if network.subreaper:
            for pid in (channel_pid, *node_pids.values()):
                _reap(pid)
        for name in node_pids:
            log = await trio.Path(str(before["nodes"][name]["log"])).read_text()
            assert f"qnetd {name}: qnet-channeld at" in log, log[-500:]
            assert "is unreachable" in log, log[-500:]
        status = await trio.to_thread.run_sync(run_qnet, "restart", "alice", "--run-dir", run)
        assert status.returncode == 1
        assert "qnet restart --channel" in status.stderr
        started = time.monotonic()
        result = await trio.to_thread.run_sync(run_qnet, "restart", "--channel", "--run-dir", run)
        assert result.returncode == 0, result.stderr
        assert "2 nodes healthy, linked and routed" in result.stdout
        restarted = time.monotonic() - started
        async with (
            qnet.open_node("alice", run_dir=run) as alice,
            qnet.open_node("bob", run_dir=run) as bob,
        ):
            assert await _exchange(alice, bob) == 12
    print(f"backend killed: stream ended after {ended:.3f} s; restart --channel {restarted:.2f} s")
