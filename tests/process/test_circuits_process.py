"""Circuits through real daemon processes (`qnet up`), over the NetworkLayer API.

chain4: a circuit alice → bob over both repeaters; both ends get the same pairs by index, and
their halves, measured by the clients (Z and X on alternate pairs, through the LinkLayer's
MeasureQubits like any held qubit), agree as the predicted Bell weights say.

diamond: a stream circuit alice → bob on the better path; its intermediate node's daemon is
killed with SIGKILL: both ends' streams end UNREACHABLE within a stated bound, routing drops
the node, a new circuit takes the other path and pairs flow again; `qnet restart` brings the
node's routes back.

Each module starts its own network (`--time-scale 0.1`, see `_up`) and stops it whatever
happens; as in test_qnet_up, the pytest process is the child subreaper meanwhile, so a killed
daemon is reaped here and nothing is left running.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from qnet.daemon.control import DaemonClient, open_daemon_client
from qnet.physical.gates import Basis
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
from tests.process.test_routes_process import _bound_s, _state, _without

pytestmark = pytest.mark.process

CHAIN4 = ROOT / "examples" / "chain4.toml"
DIAMOND = ROOT / "examples" / "diamond.toml"
#: Physical seconds per wall second. Between processes every message and backend call takes
#: milliseconds of wall time, and the link layer plans for the delays it measures: at scale 1 a
#: loaded machine's delays eat the fidelity budget of a three-link circuit. A tenth leaves the
#: physics alone and makes the daemons' delays ten times shorter in physical time.
TIME_SCALE = "0.1"
#: Wall-clock seconds allowed for a stream to end after a daemon of its path is killed: the
#: neighbours' transports see its connections close at once; routing's dead interval is the
#: fallback for a silent failure; the rest is slack for a loaded machine.
END_BOUND_S = 0.4 + 1.6


def _up(topology: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    run_dir = tmp_path_factory.mktemp("qnet-run")
    subreaper = _set_subreaper(True)
    try:
        up = qnet("up", topology, "--run-dir", run_dir, "--time-scale", TIME_SCALE)
        assert up.returncode == 0, up.stderr
        state = json.loads((run_dir / "state.json").read_text())
        yield Network(run_dir, up, state, subreaper)
    finally:
        pids = _recorded_pids(run_dir)
        qnet("down", "--run-dir", run_dir)
        _kill_leftovers(pids)
        if subreaper:
            _set_subreaper(False)


@pytest.fixture(scope="module")
def chain4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from _up(CHAIN4, tmp_path_factory)


@pytest.fixture(scope="module")
def diamond(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from _up(DIAMOND, tmp_path_factory)


def _basis(index: int) -> Basis:
    return Basis.Z if index % 2 == 0 else Basis.X


@dataclass
class _Half:
    """What one end's client got: pairs by index, its outcomes, and how the circuit ended."""

    pairs: dict[int, pb.CircuitPair] = field(default_factory=dict)
    outcomes: dict[int, int] = field(default_factory=dict)
    closed: pb.CircuitClosed | None = None


async def _measure_end(client: DaemonClient, events: AsyncIterator[pb.CircuitEvent]) -> _Half:
    """Read one end's events until ``closed``, measuring the held halves as they come (all
    that arrived during the previous call in the next one: memory is 8 qubits per node)."""
    half = _Half()
    send, recv = trio.open_memory_channel[pb.CircuitPair](math.inf)

    async def read() -> None:
        with send:
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "pair":
                    assert not event.pair.measured
                    half.pairs[event.pair.index] = event.pair
                    send.send_nowait(event.pair)
                elif kind == "closed":
                    half.closed = event.closed
                    return

    async def measure() -> None:
        async for first in recv:
            batch = [first]
            while True:
                try:
                    batch.append(recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            bases = [_basis(p.index) for p in batch]
            outcomes = await client.measure_qubits([p.qubit for p in batch], bases)
            for pair, outcome in zip(batch, outcomes, strict=True):
                half.outcomes[pair.index] = outcome

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(measure)
    return half


def _agreement(weights: list[float], basis: Basis, measure_error: float) -> float:
    """Probability that both ends read the same outcome: Z agrees on Φ±, X on Φ+ and Ψ+
    (weights on Φ+, Ψ+, Φ−, Ψ−), each read flipped with the measurement error."""
    w = weights
    a = w[0] + w[2] if basis is Basis.Z else w[0] + w[1]
    e = measure_error
    same = (1 - e) ** 2 + e**2
    return a * same + (1 - a) * (1 - same)


async def test_chain4_pairs_match_by_index_and_correlate(chain4: Network) -> None:
    number = 80
    measure_error = load_topology(CHAIN4).node("alice").params.measure_error
    with trio.fail_after(60):
        async with (
            open_daemon_client(chain4.address("alice")) as alice,
            open_daemon_client(chain4.address("bob")) as bob,
            bob.circuit_events() as tail,
        ):
            tail_it = aiter(tail)
            async with alice.open_circuit("bob", min_fidelity=0.7, number=number) as (
                opened,
                events,
            ):
                assert list(opened.path) == ["alice", "r1", "r2", "bob"]
                incoming = await anext(tail_it)
                assert incoming.incoming.circuit_id == opened.circuit_id
                ends: dict[str, _Half] = {}

                async def run(
                    name: str, client: DaemonClient, it: AsyncIterator[pb.CircuitEvent]
                ) -> None:
                    ends[name] = await _measure_end(client, it)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run, "alice", alice, events)
                    nursery.start_soon(run, "bob", bob, tail_it)
            for node in (alice, bob):
                assert (await node.status()).qubits_held_for_clients == 0
    head, far = ends["alice"], ends["bob"]
    assert sorted(head.pairs) == sorted(far.pairs) == list(range(number))
    assert sorted(head.outcomes) == sorted(far.outcomes) == list(range(number))
    for half in (head, far):
        assert half.closed is not None
        assert half.closed.code == pb.CIRCUIT_CLOSE_CODE_COMPLETED
        assert half.closed.delivered == number
    totals = {Basis.Z: [0.0, 0.0, 0], Basis.X: [0.0, 0.0, 0]}  # expected, variance, observed
    for i in range(number):
        assert head.pairs[i].remote == "bob"
        assert far.pairs[i].remote == "alice"
        assert head.pairs[i].fidelity_estimate >= 0.7
        p = _agreement(list(head.pairs[i].weights), _basis(i), measure_error)
        t = totals[_basis(i)]
        t[0] += p
        t[1] += p * (1 - p)
        t[2] += head.outcomes[i] == far.outcomes[i]
    for basis, (expected, variance, observed) in totals.items():
        # 5 standard deviations, plus 3 % of the pairs for what the prediction leaves out.
        slack = 5 * math.sqrt(variance) + 0.03 * number / 2
        assert abs(observed - expected) <= slack, (basis, observed, expected)
    agree = sum(t[2] for t in totals.values())
    assert agree > number / 2 + 3 * math.sqrt(number / 4), "no correlation beyond chance"


def test_qnet_circuit_prints_rate_fidelity_and_correlation(chain4: Network) -> None:
    result = qnet("circuit", "alice", "bob", "--pairs", "20", "--run-dir", chain4.run_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "circuit alice → bob over alice r1 r2 bob" in out
    assert "20 of 20 pairs delivered and measured at both ends" in out
    assert "⟨ZZ⟩ measured" in out
    assert "closed: completed by bob" in out
    unknown = qnet("circuit", "alice", "carol", "--run-dir", chain4.run_dir)
    assert unknown.returncode == 1
    assert "no node 'carol'" in unknown.stderr


async def _pairs_at_both_ends(
    head: AsyncIterator[pb.CircuitEvent], tail: AsyncIterator[pb.CircuitEvent], n: int
) -> tuple[list[pb.CircuitPair], list[pb.CircuitPair]]:
    """The first ``n`` pairs each end gets (measured on delivery: nothing held)."""
    got: dict[str, list[pb.CircuitPair]] = {"head": [], "tail": []}

    async def read(name: str, events: AsyncIterator[pb.CircuitEvent]) -> None:
        async for event in events:
            kind = event.WhichOneof("event")
            assert kind in ("pair", "incoming"), event
            if kind == "pair":
                got[name].append(event.pair)
                if len(got[name]) == n:
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, "head", head)
        nursery.start_soon(read, "tail", tail)
    return got["head"], got["tail"]


async def _closed(events: AsyncIterator[pb.CircuitEvent]) -> pb.CircuitClosed:
    async for event in events:
        if event.WhichOneof("event") == "closed":
            return event.closed
    raise AssertionError("the stream ended without `closed`")


@dataclass
class _Recovery:
    head_closed: pb.CircuitClosed
    tail_closed: pb.CircuitClosed
    ended_s: float
    rerouted_s: float
    resumed_s: float


async def _kill_and_reroute(diamond: Network) -> _Recovery:
    nodes = _state(diamond.run_dir)["nodes"]
    async with (
        open_daemon_client(str(nodes["alice"]["address"])) as alice,
        open_daemon_client(str(nodes["bob"]["address"])) as bob,
    ):
        async with (
            bob.circuit_events(measure_on_delivery=Basis.Z) as tail,
            alice.open_circuit("bob", min_fidelity=0.6, measure_on_delivery=Basis.Z) as (
                opened,
                events,
            ),
        ):
            path = list(opened.path)
            assert path == ["alice", "r1", "bob"]  # the 5 km links, not the 8 km ones
            tail_it, head_it = aiter(tail), aiter(events)
            mine, theirs = await _pairs_at_both_ends(head_it, tail_it, 5)
            assert [p.index for p in mine] == [p.index for p in theirs] == list(range(5))
            victim = path[1]
            pid = int(str(nodes[victim]["pid"]))
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(END_BOUND_S):
                head_closed = await _closed(head_it)
                tail_closed = await _closed(tail_it)
            ended = time.monotonic() - killed
        if diamond.subreaper:
            _reap(pid)
        with trio.fail_after(_bound_s()):
            routes = await _without(str(nodes["alice"]["address"]), victim)
        rerouted = time.monotonic() - killed
        assert {r.destination: list(r.path) for r in routes.routes}["bob"] == [
            "alice",
            "r2",
            "bob",
        ]
        async with (
            bob.circuit_events(measure_on_delivery=Basis.Z) as tail,
            alice.open_circuit("bob", min_fidelity=0.6, measure_on_delivery=Basis.Z) as (
                opened,
                events,
            ),
        ):
            assert list(opened.path) == ["alice", "r2", "bob"]
            mine, theirs = await _pairs_at_both_ends(aiter(events), aiter(tail), 5)
            assert [p.index for p in mine] == [p.index for p in theirs] == list(range(5))
        resumed = time.monotonic() - killed
    return _Recovery(head_closed, tail_closed, ended, rerouted, resumed)


async def test_a_killed_repeater_ends_the_circuit_and_a_new_one_takes_the_other_path(
    diamond: Network,
) -> None:
    with trio.fail_after(60):
        recovery = await _kill_and_reroute(diamond)
    print(
        f"stream ended {recovery.ended_s * 1e3:.0f} ms after the kill, routes dropped r1"
        f" after {recovery.rerouted_s * 1e3:.0f} ms, pairs again over r2 after"
        f" {recovery.resumed_s * 1e3:.0f} ms"
    )
    for closed in (recovery.head_closed, recovery.tail_closed):
        assert closed.code == pb.CIRCUIT_CLOSE_CODE_UNREACHABLE
        assert closed.node in ("alice", "bob")  # the ends notice their link to r1 go
        assert "r1" in closed.reason
    assert recovery.ended_s <= END_BOUND_S


async def _routes_of_alice(run_dir: Path) -> dict[str, str]:
    nodes = _state(run_dir)["nodes"]
    with trio.fail_after(10):
        async with open_daemon_client(str(nodes["alice"]["address"])) as alice:
            return {r.destination: r.next_hop for r in (await alice.routes()).routes}


def test_restart_brings_the_routes_back(diamond: Network) -> None:
    result = qnet("restart", "r1", "--run-dir", diamond.run_dir)
    assert result.returncode == 0, result.stderr
    assert "r1 started again (it was not running)" in result.stdout
    print(result.stdout.strip())
    assert trio.run(_routes_of_alice, diamond.run_dir) == {"r1": "r1", "r2": "r2", "bob": "r1"}
