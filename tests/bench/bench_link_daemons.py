"""Benchmark of the link layer through `qnet up` daemons on this machine.

1. `qnet up` of a ring of ten nodes (examples/ring10.toml) until every daemon is healthy and
   linked: wall time of the whole command (median of --runs), and each daemon's resident
   memory (VmRSS) once up.
2. Neighbour KEEP pairs delivered to a link-layer user and measured at both ends, through the
   daemons of examples/two_nodes.toml: alice's client issues CREATE requests (LinkCreate) and
   measures each delivered half at once (MeasureQubit); bob's client watches the link
   (LinkEvents) and measures its halves. Pairs per wall second, median of --runs runs of
   --pairs pairs. KEEP halves occupy memory until measured, so the client keeps --window
   requests of --batch pairs outstanding (window × batch stays below the 8 memory qubits).

    python tests/bench/bench_link_daemons.py --runs 3 --pairs 600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from qnet.daemon import procs
from qnet.daemon.control import DaemonClient, open_daemon_client
from qnet.physical.gates import Basis
from qnet.topology import load_topology, topology_to_toml
from qnet.v1 import node_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def qnet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "qnet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"qnet {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def up_time(topology: Path, runs: int) -> tuple[list[float], dict[str, int]]:
    times: list[float] = []
    rss: dict[str, int] = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            qnet("up", topology, "--run-dir", tmp)
            times.append(time.perf_counter() - t)
            state = json.loads((Path(tmp) / "state.json").read_text())
            daemons = [*state["nodes"].values(), state["channel"]]
            rss = {d["name"]: procs.resident_bytes(d["pid"]) for d in daemons}
            qnet("down", "--run-dir", tmp)
    return times, rss


RUN_LIMIT_S = 60.0


class Tally:
    def __init__(self, target: int) -> None:
        self.target = target
        self.stalled = False
        self.alice = 0
        self.bob = 0
        self.errors: dict[str, int] = {}
        self.agree = 0
        self.fidelity = 0.0
        self.outcomes: dict[tuple[str, int], tuple[int, int]] = {}  # pair -> (outcome, bell)

    def match(self, pair: tuple[str, int], outcome: int, bell: int) -> None:
        other = self.outcomes.pop(pair, None)
        if other is None:
            self.outcomes[pair] = (outcome, bell)
        else:
            self.agree += (outcome == other[0]) == (bell & 1 == 0)


async def _measure_alice(alice: DaemonClient, ok: pb.LinkOk, tally: Tally) -> None:
    outcome = await alice.measure_qubit(ok.qubit, Basis.Z)
    tally.alice += 1
    tally.fidelity += ok.fidelity_estimate
    tally.match((ok.link_id, ok.sequence), outcome, ok.bell_index)


async def _alice_slot(alice: DaemonClient, batch: int, tally: Tally) -> None:
    # Each half is measured in a task of its own, so measurements overlap the next pairs.
    async with trio.open_nursery() as measuring:
        while tally.alice < tally.target:
            request = pb.LinkCreateRequest(remote="bob", number=batch, kind=pb.PAIR_KIND_KEEP)
            async with alice.link_create(request) as events:
                async for event in events:
                    case = event.WhichOneof("event")
                    if case == "ok":
                        measuring.start_soon(_measure_alice, alice, event.ok, tally)
                    elif case == "err":
                        name = pb.LinkErrorCode.Name(event.err.code)
                        tally.errors[name] = tally.errors.get(name, 0) + 1


async def _measure_bob(bob: DaemonClient, ok: pb.LinkOk, tally: Tally, done: trio.Event) -> None:
    outcome = await bob.measure_qubit(ok.qubit, Basis.Z)
    tally.bob += 1
    tally.match((ok.link_id, ok.sequence), outcome, ok.bell_index)
    if tally.bob >= tally.target and tally.alice >= tally.target:
        done.set()


async def _bob_side(bob: DaemonClient, events: AsyncIterator[pb.LinkEvent], tally: Tally) -> None:
    done = trio.Event()
    # Reading stops once both ends have their pairs; measurements already started finish, so
    # no half is left held in the daemon (unread ones are freed when the stream closes).
    async with trio.open_nursery() as measuring:
        with trio.CancelScope() as reading:
            measuring.start_soon(_watch_done, done, reading)
            async for event in events:
                if event.WhichOneof("event") == "ok":
                    measuring.start_soon(_measure_bob, bob, event.ok, tally, done)
        done.set()


async def _watch_done(done: trio.Event, scope: trio.CancelScope) -> None:
    await done.wait()
    scope.cancel()


async def keep_rate(
    alice_address: str, bob_address: str, pairs: int, window: int, batch: int
) -> tuple[float, Tally]:
    tally = Tally(pairs)
    async with (
        open_daemon_client(alice_address) as alice,
        open_daemon_client(bob_address) as bob,
        bob.link_events("alice") as far,
    ):
        t = time.perf_counter()
        # Bounded: a run that stalls (a request the link layer never finishes) is reported as
        # such, with the pairs it got, instead of hanging the benchmark.
        with trio.move_on_after(RUN_LIMIT_S) as limit:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_bob_side, bob, far, tally)
                for _ in range(window):
                    nursery.start_soon(_alice_slot, alice, batch, tally)
        tally.stalled = limit.cancelled_caught
        elapsed = time.perf_counter() - t
    return min(tally.alice, tally.bob) / elapsed, tally


def _stop_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so `qnet down` in the finally runs
    and no daemon outlives the benchmark."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    _stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--up-runs", type=int, default=3, help="qnet up ring10 runs (0: skip)")
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument(
        "--memory-qubits",
        type=int,
        default=32,
        help="memory per node for the pair benchmark (two_nodes.toml has 8)",
    )
    parser.add_argument("--time-scale", type=float, help="passed to qnet up (default: file's)")
    a = parser.parse_args()

    if a.up_runs:
        times, rss = up_time(ROOT / "examples" / "ring10.toml", a.up_runs)
        print(f"qnet up ring10 to healthy and linked: median {statistics.median(times):.2f} s")
        print("  runs (wall, whole command): " + ", ".join(f"{t:.2f} s" for t in times))
        print(
            "  resident memory per daemon: "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in rss.items())
        )

    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--time-scale", str(a.time_scale)] if a.time_scale else []
        top = load_topology(ROOT / "examples" / "two_nodes.toml")
        nodes_ = tuple(
            dataclasses.replace(
                n, params=dataclasses.replace(n.params, memory_qubits=a.memory_qubits)
            )
            for n in top.nodes
        )
        topology_file = Path(tmp) / "two_nodes_bench.toml"
        topology_file.write_text(topology_to_toml(dataclasses.replace(top, nodes=nodes_)))
        rates = []
        for _ in range(a.runs):
            # A fresh network per run: halves the previous run's client never read stay held
            # in the daemon (until their lease runs out) and would skew the next run.
            qnet("up", topology_file, "--run-dir", tmp, *extra)
            try:
                state = json.loads((Path(tmp) / "state.json").read_text())
                nodes = state["nodes"]
                rate, tally = trio.run(
                    keep_rate,
                    nodes["alice"]["address"],
                    nodes["bob"]["address"],
                    a.pairs,
                    a.window,
                    a.batch,
                )
            finally:
                qnet("down", "--run-dir", tmp)
            rates.append(rate)
            n = max(tally.alice, 1)
            print(
                f"  run: {rate:.0f} pairs/s ({tally.alice} pairs; Z agreement"
                f" {tally.agree / n:.3f}, mean fidelity estimate {tally.fidelity / n:.3f};"
                f"{' STALLED at the time limit;' if tally.stalled else ''}"
                f" errors {tally.errors or 'none'})"
            )
        print(
            f"KEEP pairs delivered and measured at both ends, two_nodes with"
            f" {a.memory_qubits} memory qubits per node:"
            f" median {statistics.median(rates):.0f} pairs/s"
            f" (window {a.window} x batch {a.batch}, time scale {state['time_scale']:g})"
        )


if __name__ == "__main__":
    main()
