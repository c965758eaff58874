"""`qnet up` / `status` / `links` / `down` with real daemon processes, and the link layer
through a daemon's LinkLayer API.

One chain4 network serves the module (starting it is the expensive part); the last test stops
it. The pytest process makes itself the child subreaper while the module runs, so the daemons,
which outlive `qnet up`, become its children when `qnet up` exits: the test then reaps them and
`os.kill(pid, 0)` tells exactly whether a process is left. Whatever happens, the module's
teardown stops every recorded PID.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from qnet.daemon.control import DaemonClient, open_daemon_client
from qnet.errors import InvalidArgument, NotFound
from qnet.physical.gates import Basis
from qnet.v1 import node_pb2 as pb

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
CHAIN4 = ROOT / "examples" / "chain4.toml"
CLI_TIMEOUT_S = 60
PR_SET_CHILD_SUBREAPER = 36


def qnet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QNET_RUN_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "qnet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        check=False,
    )


def _set_subreaper(on: bool) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _recorded_pids(run_dir: Path) -> list[int]:
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return []
    daemons = [*state["nodes"].values(), state["channel"]]
    return [int(d["pid"]) for d in daemons if d]


def _reap(pid: int) -> int | None:
    """Collect ``pid`` if it is an exited child of ours (it is, once orphaned to us); its
    wait status, or None if it is not our child."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        _reap(pid)


@dataclass(frozen=True)
class Network:
    run_dir: Path
    up: subprocess.CompletedProcess[str]
    state: dict[str, object]
    subreaper: bool

    def address(self, node: str) -> str:
        nodes = self.state["nodes"]
        assert isinstance(nodes, dict)
        return str(nodes[node]["address"])


@pytest.fixture(scope="module")
def chain4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    run_dir = tmp_path_factory.mktemp("qnet-run")
    subreaper = _set_subreaper(True)
    try:
        up = qnet("up", CHAIN4, "--run-dir", run_dir)
        assert up.returncode == 0, up.stderr
        state = json.loads((run_dir / "state.json").read_text())
        yield Network(run_dir, up, state, subreaper)
    finally:
        pids = _recorded_pids(run_dir)
        qnet("down", "--run-dir", run_dir)
        _kill_leftovers(pids)
        if subreaper:
            _set_subreaper(False)


def test_up_reports_every_daemon(chain4: Network) -> None:
    out = chain4.up.stdout
    assert "network chain4 is up" in out
    for node in ("alice", "r1", "r2", "bob"):
        assert node in out
        assert chain4.address(node).startswith("127.0.0.1:")
    assert chain4.state["status"] == "up"


def test_status_shows_every_daemon(chain4: Network) -> None:
    result = qnet("status", "--run-dir", chain4.run_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for node in ("alice", "r1", "r2", "bob", "channel"):
        row = next(line for line in lines if line.startswith(node + " "))
        assert "healthy" in row
    nodes = chain4.state["nodes"]
    assert isinstance(nodes, dict)
    for record in nodes.values():
        assert str(record["pid"]) in result.stdout


def _agreement_bound(n: int, fidelity: float) -> float:
    """5 standard deviations of a Bernoulli mean, plus the measurement errors of both ends
    (1 % each in chain4) and the model's own slack."""
    return 5 * math.sqrt(max(fidelity * (1 - fidelity), 0.01) / n) + 0.02 + 0.01


def _z_agrees(a: int, b: int, bell_index: int) -> bool:
    """Z outcomes are equal for Φ± (x = 0) and differ for Ψ± (x = 1)."""
    return (a == b) == (bell_index & 1 == 0)


async def _collect(
    alice: DaemonClient, r1: DaemonClient, request: pb.LinkCreateRequest
) -> tuple[pb.LinkAccepted, list[pb.LinkOk], list[pb.LinkOk]]:
    mine: list[pb.LinkOk] = []
    theirs: list[pb.LinkOk] = []
    async with r1.link_events("alice") as far, alice.link_create(request) as near:
        near_it = aiter(near)
        first = await anext(near_it)
        assert first.WhichOneof("event") == "accepted"
        async for event in near_it:
            assert event.WhichOneof("event") == "ok", event
            mine.append(event.ok)
        far_it = aiter(far)
        while len(theirs) < request.number:
            event = await anext(far_it)
            assert event.WhichOneof("event") == "ok", event
            theirs.append(event.ok)
    return first.accepted, mine, theirs


async def test_measure_pairs_are_correlated_per_bell_index(chain4: Network) -> None:
    n = 400
    request = pb.LinkCreateRequest(
        remote="r1", number=n, kind=pb.PAIR_KIND_MEASURE, basis=pb.LINK_BASIS_Z
    )
    with trio.fail_after(40):
        async with (
            open_daemon_client(chain4.address("alice")) as alice,
            open_daemon_client(chain4.address("r1")) as r1,
        ):
            accepted, mine, theirs = await _collect(alice, r1, request)
    assert len(mine) == len(theirs) == n
    assert [ok.index_in_request for ok in mine] == list(range(n))
    agree = 0
    for a, b in zip(mine, theirs, strict=True):
        # Both ends name the same pair, request and Bell state.
        assert (a.link_id, a.sequence) == (b.link_id, b.sequence)
        assert (a.origin, a.create_id) == (b.origin, b.create_id)
        assert (a.origin, a.create_id) == (accepted.origin, accepted.create_id)
        assert a.bell_index == b.bell_index
        assert a.kind == b.kind == pb.PAIR_KIND_MEASURE
        assert a.basis == b.basis
        agree += _z_agrees(a.outcome, b.outcome, a.bell_index)
    fidelity = sum(ok.fidelity_estimate for ok in mine) / n
    rate = agree / n
    assert abs(rate - fidelity) <= _agreement_bound(n, fidelity), (rate, fidelity)
    assert rate > 0.5 + 3 * math.sqrt(0.25 / n), "no correlation beyond chance"


async def test_keep_pairs_measured_at_both_ends(chain4: Network) -> None:
    """KEEP halves occupy memory until measured, and the link layer generates faster than a
    client measures, so each request asks for fewer pairs than a node has memory qubits."""
    requests, per_request = 16, 5
    agree = 0
    fidelities = []
    with trio.fail_after(40):
        async with (
            open_daemon_client(chain4.address("alice")) as alice,
            open_daemon_client(chain4.address("r1")) as r1,
            r1.link_events("alice") as far,
        ):
            far_it = aiter(far)
            for _ in range(requests):
                request = pb.LinkCreateRequest(
                    remote="r1", number=per_request, kind=pb.PAIR_KIND_KEEP
                )
                async with alice.link_create(request) as near:
                    near_it = aiter(near)
                    assert (await anext(near_it)).WhichOneof("event") == "accepted"
                    for k in range(per_request):
                        a, b = (await anext(near_it)).ok, (await anext(far_it)).ok
                        assert a.index_in_request == b.index_in_request == k
                        assert (a.link_id, a.sequence, a.bell_index) == (
                            b.link_id,
                            b.sequence,
                            b.bell_index,
                        )
                        assert a.qubit
                        assert b.qubit
                        ma = await alice.measure_qubit(a.qubit, Basis.Z)
                        mb = await r1.measure_qubit(b.qubit, Basis.Z)
                        agree += _z_agrees(ma, mb, a.bell_index)
                        fidelities.append(a.fidelity_estimate)
            # Measuring frees the qubit: it is not held any more.
            with pytest.raises(NotFound, match="not held"):
                await alice.measure_qubit(a.qubit, Basis.Z)
            assert (await alice.status()).qubits_held_for_clients == 0
            assert (await r1.status()).qubits_held_for_clients == 0
    n = len(fidelities)
    fidelity = sum(fidelities) / n
    assert abs(agree / n - fidelity) <= _agreement_bound(n, fidelity), (agree, n, fidelity)


async def test_bad_link_requests_are_typed_errors(chain4: Network) -> None:
    with trio.fail_after(20):
        async with open_daemon_client(chain4.address("alice")) as alice:
            bob = pb.LinkCreateRequest(remote="bob", number=1, kind=pb.PAIR_KIND_KEEP)
            no_pairs = pb.LinkCreateRequest(remote="r1", number=0, kind=pb.PAIR_KIND_KEEP)
            no_kind = pb.LinkCreateRequest(remote="r1", number=1)
            for request, error, match in (
                (bob, NotFound, "'bob' is not a neighbour"),
                (no_pairs, InvalidArgument, "number must be at least 1"),
                (no_kind, InvalidArgument, "kind 0 is not a pair kind"),
            ):
                with pytest.raises(error, match=match):
                    async with alice.link_create(request) as events:
                        await anext(aiter(events))
            with pytest.raises(NotFound, match="qubit 999999 is not held"):
                await alice.measure_qubit(999_999)
            # The daemon is still healthy after all that.
            assert (await alice.health()).serving


def test_links_shows_every_link(chain4: Network) -> None:
    result = qnet("links", "--run-dir", chain4.run_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"alice - r1", "r1 - r2", "bob - r2"}
    # alice - r1 delivered pairs in the tests above: a rate and a fidelity are shown.
    cells = rows["alice - r1"].split()
    assert int(cells[5]) > 0
    assert float(cells[7]) > 0
    assert 0.5 < float(cells[8]) <= 1


def test_second_up_on_a_live_run_dir_is_refused(chain4: Network) -> None:
    result = qnet("up", CHAIN4, "--run-dir", chain4.run_dir)
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert "qnet down" in result.stderr
    assert json.loads((chain4.run_dir / "state.json").read_text()) == chain4.state


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        topology = tmp_path / "busy.toml"
        text = CHAIN4.read_text().replace('name = "r2"', f'name = "r2"\nport = {port}')
        topology.write_text(text)
        result = qnet("up", topology, "--run-dir", tmp_path / "run")
    assert result.returncode == 1
    assert f"node r2: port {port} on 127.0.0.1" in result.stderr
    assert "in use" in result.stderr
    assert not (tmp_path / "run" / "state.json").exists()


def test_down_leaves_no_process(chain4: Network) -> None:
    pids = _recorded_pids(chain4.run_dir)
    assert len(pids) == 5
    result = qnet("down", "--run-dir", chain4.run_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped network chain4: 5 daemons"  # none killed
    assert not (chain4.run_dir / "state.json").exists()
    for pid in pids:
        if chain4.subreaper:
            status = _reap(pid)
            # SIGTERM is a clean stop: exit code 0.
            assert status is not None
            assert os.waitstatus_to_exitcode(status) == 0
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        else:  # no subreaper: an exited daemon may wait as a zombie for init to reap it
            assert not Path(f"/proc/{pid}").exists() or "Z" in _state_of(pid)
    again = qnet("down", "--run-dir", chain4.run_dir)
    assert again.returncode == 0
    assert "nothing to stop" in again.stdout


def _state_of(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return text[text.rfind(")") + 2 :].split()[0]
