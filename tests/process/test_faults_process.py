"""Faults with real daemon processes (`qnet up examples/diamond.toml`), measured.

- `qnet up` refuses a topology that cannot work (a disconnected graph, duplicate names)
  before it starts anything, naming the problem.
- r1, the repeater on alice's best path to bob, is killed with SIGKILL while an application
  connection alice → bob streams measure-directly pairs and messages through it:
  * both applications get ``qnet.errors.Unreachable`` (typed) within END_BOUND_S;
  * every other node's routing drops r1 within the routing convergence bound (from the
    dead interval, see test_routes_process._bound_s);
  * qnet-channeld ends r1's session and frees its qubits within LEASE_BOUND_S (its event
    stream closes with the process; the backend waits ORPHAN_LEASE_S for it to come back);
  * alice and bob hold, at the backend, exactly the qubits they say they hold: the circuit's
    qubits went with it;
  * a new connection takes the path over r2 and pairs and messages flow;
  * `qnet restart r1` rejoins it: routes through r1 again, and a connection over it works.

The measured times are printed (pytest -s, or -rP shows them for passing tests).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

import qnet
from qnet.api.aio import AsyncNode, AsyncSocket
from qnet.channel.client import open_channel_client
from qnet.channel.server import ORPHAN_LEASE_S
from qnet.daemon.control import open_daemon_client
from qnet.errors import Unreachable
from tests.network.circuithelpers import both
from tests.process.test_circuits_process import DIAMOND, END_BOUND_S, _up
from tests.process.test_qnet_up import ROOT, Network, _reap
from tests.process.test_qnet_up import qnet as run_qnet
from tests.process.test_routes_process import _bound_s, _state, _without

pytestmark = pytest.mark.process

#: Wall seconds for qnet-channeld to free a killed daemon's qubits: the lease, plus slack
#: for the kernel to close its connection and a loaded machine.
LEASE_BOUND_S = ORPHAN_LEASE_S + 2.0
PORT = 7
LIMIT_S = 60
#: Wall seconds for the nodes' and the backend's qubit counts to agree.
AGREE_BOUND_S = 10.0
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def diamond(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from _up(DIAMOND, tmp_path_factory)
    print("\nfault figures (s):", {k: round(v, 3) for k, v in FIGURES.items()})


def test_up_refuses_a_disconnected_topology(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "chain4.toml").read_text()
    topology = tmp_path / "split.toml"
    # chain4 without its middle link r1 - r2: {alice, r1} and {r2, bob}.
    cut = text.replace('[[link]]\nbetween = ["r1", "r2"]\nlength_km = 5\n', "")
    assert cut != text
    topology.write_text(cut)
    result = run_qnet("up", topology, "--run-dir", tmp_path / "run")
    assert result.returncode == 1
    assert "is not connected" in result.stderr, result.stderr
    assert "{alice, r1}; {r2, bob}" in result.stderr
    assert not (tmp_path / "run" / "state.json").exists()


def test_up_refuses_duplicate_names(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "chain4.toml").read_text()
    topology = tmp_path / "dup.toml"
    topology.write_text(text.replace('name = "r2"', 'name = "r1"', 1))
    result = run_qnet("up", topology, "--run-dir", tmp_path / "run")
    assert result.returncode == 1
    assert "duplicate node name 'r1'" in result.stderr, result.stderr
    assert not (tmp_path / "run" / "state.json").exists()


@dataclass
class _Stream:
    """What one end of a streaming connection saw."""

    rounds: int = 0
    error: BaseException | None = None
    failed_at: float = 0.0
    history: list[int] = field(default_factory=list)


async def _connect(alice: AsyncNode, bob: AsyncNode) -> tuple[AsyncSocket, AsyncSocket]:
    srv = bob.socket()
    await srv.bind(PORT)
    await srv.listen()
    cli = alice.socket()
    _, (conn, _) = await both(lambda: cli.connect(("bob", PORT), min_fidelity=0.5), srv.accept)
    await srv.close()
    return cli, conn


async def _stream(sock: AsyncSocket, out: _Stream, started: trio.Event, n: int = 4) -> None:
    """Measure-directly pairs and a message per round until the connection fails."""
    try:
        while True:
            out.history += await sock.epr_measure(n)
            await sock.send(b"round %d" % out.rounds)
            assert await sock.recv() == b"round %d" % out.rounds
            out.rounds += 1
            if out.rounds >= 2:
                started.set()
    except Unreachable as exc:
        out.error = exc
        out.failed_at = time.monotonic()


@dataclass
class _Kill:
    """Both ends of a connection that streamed when ``pid`` was killed at ``at``."""

    head: _Stream
    tail: _Stream
    at: float
    nursery: trio.Nursery


@asynccontextmanager
async def _killed_mid_stream(alice: AsyncNode, bob: AsyncNode, pid: int) -> AsyncIterator[_Kill]:
    """alice and bob stream over a new connection; once it runs, ``pid`` gets SIGKILL. The
    block runs in the streams' nursery (to watch the aftermath beside them); leaving it waits
    until both ends have failed."""
    cli, conn = await _connect(alice, bob)
    head, tail = _Stream(), _Stream()
    going = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stream, cli, head, going)
        nursery.start_soon(_stream, conn, tail, trio.Event())
        await going.wait()
        at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        yield _Kill(head, tail, at, nursery)


async def _exchange(alice: AsyncNode, bob: AsyncNode, rounds: int = 3) -> int:
    cli, conn = await _connect(alice, bob)
    pairs = 0
    for k in range(rounds):
        a, b = await both(lambda: cli.epr_measure(4), lambda: conn.epr_measure(4))
        assert len(a) == len(b) == 4
        pairs += len(a)
        await cli.send(b"hi %d" % k)
        assert await conn.recv() == b"hi %d" % k
    await cli.close()
    await conn.close()
    return pairs


async def _backend_agrees(network: Network, nodes: tuple[str, ...]) -> dict[str, int]:
    """Each node's count of its qubits equals the backend's, read until they agree (bounded by
    the caller: a request in flight may separate them for a moment)."""
    channel = str(_state(network.run_dir)["channel"]["address"])
    addresses = {n: str(_state(network.run_dir)["nodes"][n]["address"]) for n in nodes}
    deadline = trio.current_time() + AGREE_BOUND_S
    async with open_channel_client(channel) as backend:
        while True:
            by_node = dict((await backend.health()).qubits_by_node)
            mine = {}
            for node, address in addresses.items():
                async with open_daemon_client(address) as client:
                    mine[node] = (await client.status()).memory_qubits_in_use
            if all(by_node.get(n) == mine[n] for n in nodes):
                return mine
            assert trio.current_time() < deadline, f"nodes say {mine}, the backend {by_node}"
            await trio.sleep(0.05)  # two processes' counters: nothing to wait on; bounded


async def _freed(network: Network, node: str) -> float:
    """Seconds until the backend no longer holds a session (or qubits) for ``node``."""
    channel = str(_state(network.run_dir)["channel"]["address"])
    start = time.monotonic()
    async with open_channel_client(channel) as backend:
        while node in (await backend.health()).qubits_by_node:  # noqa: ASYNC110
            await trio.sleep(0.05)  # the backend's lease runs in its own process; bounded
    return time.monotonic() - start


async def test_killing_a_repeater_mid_stream(diamond: Network) -> None:
    run = str(diamond.run_dir)
    nodes = _state(diamond.run_dir)["nodes"]
    with trio.fail_after(LIMIT_S):
        async with (
            qnet.open_node("alice", run_dir=run) as alice,
            qnet.open_node("bob", run_dir=run) as bob,
        ):
            pid = int(str(nodes["r1"]["pid"]))
            async with _killed_mid_stream(alice, bob, pid) as kill:
                killed = kill.at

                async def freed() -> None:
                    FIGURES["backend freed r1's qubits"] = await _freed(diamond, "r1")

                async def routes() -> None:
                    await _without(str(nodes["alice"]["address"]), "r1")
                    FIGURES["alice's routes dropped r1"] = time.monotonic() - killed
                    await _without(str(nodes["bob"]["address"]), "r1")
                    await _without(str(nodes["r2"]["address"]), "r1")
                    FIGURES["every node's routes dropped r1"] = time.monotonic() - killed

                kill.nursery.start_soon(freed)
                kill.nursery.start_soon(routes)
            head, tail = kill.head, kill.tail
            if diamond.subreaper:
                _reap(pid)
            for end in (head, tail):
                assert isinstance(end.error, Unreachable), end
            FIGURES["app stream ended (Unreachable)"] = max(head.failed_at, tail.failed_at) - killed
            agreed = await _backend_agrees(diamond, ("alice", "r2", "bob"))
            FIGURES["pairs before the kill"] = len(head.history)
            try:
                pairs = await _exchange(alice, bob)
            except Unreachable:
                # On a saturated machine a daemon may stall past routing's dead interval
                # (2 s wall) and a neighbour then drops the link: try once more, and say so.
                FIGURES["new connection retried"] = 1
                pairs = await _exchange(alice, bob)
            FIGURES["new connection over r2 ok"] = time.monotonic() - killed
            assert pairs == 12
    assert FIGURES["app stream ended (Unreachable)"] <= END_BOUND_S
    assert FIGURES["every node's routes dropped r1"] <= _bound_s()
    assert FIGURES["backend freed r1's qubits"] <= LEASE_BOUND_S
    assert all(v >= 0 for v in agreed.values())
    print(f"kill -9 r1: {FIGURES}")


async def _routes_via_r1(network: Network) -> bool:
    address = str(_state(network.run_dir)["nodes"]["alice"]["address"])
    async with open_daemon_client(address) as client:
        routes = {r.destination: r.next_hop for r in (await client.routes()).routes}
    return routes.get("bob") == "r1"


async def test_restarting_the_repeater_rejoins_it(diamond: Network) -> None:
    started = time.monotonic()
    result = await trio.to_thread.run_sync(run_qnet, "restart", "r1", "--run-dir", diamond.run_dir)
    assert result.returncode == 0, result.stderr
    FIGURES["qnet restart r1 (routes complete)"] = time.monotonic() - started
    with trio.fail_after(LIMIT_S):
        assert await _routes_via_r1(diamond)
        run = str(diamond.run_dir)
        async with (
            qnet.open_node("alice", run_dir=run) as alice,
            qnet.open_node("bob", run_dir=run) as bob,
        ):
            assert await _exchange(alice, bob) == 12
        await _backend_agrees(diamond, ("alice", "r1", "r2", "bob"))
    FIGURES["pairs over r1 again"] = time.monotonic() - started
