"""Benchmark of end-to-end pairs over a repeater chain of `qnet up` daemons on this machine.

`qnet up` of a four-node chain (examples/chain4.toml: alice – r1 – r2 – bob, 5 km single-click
links), then one circuit alice → bob for --pairs pairs through the NetworkLayer API, measured on
delivery in Z at both ends (the daemon measures each half once the pair is delivered there, and
the event carries the outcome). Counted: pairs whose two halves were both delivered and
measured, per wall second from the `opened` event to the last of them; median of --runs runs,
each on a fresh network. Each run checks the Z correlations against the pairs' predicted Bell
weights, and prints the CPU time every daemon spent per pair (from /proc).

    python tests/bench/bench_chain_daemons.py --runs 3 --pairs 600

The time scale defaults to 0.1 physical seconds per wall second: the daemons' messages and
backend calls take milliseconds of wall time, and at scale 1 on a loaded machine the delays the
link layers measure leave three 5 km links no fidelity budget (see tests/process/
test_circuits_process.py). To see where a daemon's time goes, run py-spy on it meanwhile
(`pip install py-spy`; `py-spy record --gil -p PID -d 10 -f raw -o out.txt`; the PIDs are in
RUN_DIR/state.json, and --keep leaves the last network running).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from qnet.daemon.control import open_daemon_client
from qnet.physical.gates import Basis
from qnet.topology import load_topology
from qnet.v1 import node_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
RUN_LIMIT_S = 180.0
#: A correlation check fails when the observed agreement is this many standard deviations
#: from the predicted one (plus a 2 % allowance for what the prediction leaves out).
Z_SCORE = 5.0


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    pairs: int = 0
    seconds: float = 0.0
    open_s: float = 0.0
    stalled: bool = False
    closed: dict[str, str] = field(default_factory=dict)
    agree: int = 0
    expected: float = 0.0
    variance: float = 0.0
    fidelity: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def correlation_ok(self) -> bool:
        slack = Z_SCORE * math.sqrt(self.variance) + 0.02 * self.pairs
        return abs(self.agree - self.expected) <= slack


def z_agreement(weights: list[float], measure_error: float) -> float:
    """Probability that Z outcomes agree for a pair with these weights on (Φ+, Ψ+, Φ−, Ψ−),
    each end's reading flipped with the measurement error."""
    a = weights[0] + weights[2]
    same = (1 - measure_error) ** 2 + measure_error**2
    return a * same + (1 - a) * (1 - same)


async def circuit_run(
    alice_address: str,
    bob_address: str,
    *,
    pairs: int,
    min_fidelity: float,
    measure_error: float,
) -> Run:
    run = Run()
    halves: dict[str, dict[int, pb.CircuitPair]] = {"alice": {}, "bob": {}}
    done = trio.Event()

    async def read(name: str, events: AsyncIterator[pb.CircuitEvent]) -> None:
        async for event in events:
            kind = event.WhichOneof("event")
            if kind == "pair":
                if not event.pair.measured:
                    raise SystemExit(f"{name}: a pair arrived unmeasured")
                halves[name][event.pair.index] = event.pair
                if len(halves["alice"]) >= pairs and len(halves["bob"]) >= pairs:
                    done.set()
            elif kind == "closed":
                closed = event.closed
                run.closed[name] = (
                    f"{pb.CircuitCloseCode.Name(closed.code)} by {closed.node}: {closed.reason}"
                )
                return

    async with (
        open_daemon_client(alice_address) as alice,
        open_daemon_client(bob_address) as bob,
        bob.circuit_events(measure_on_delivery=Basis.Z) as tail,
    ):
        t = time.perf_counter()
        async with alice.open_circuit(
            "bob", min_fidelity=min_fidelity, number=pairs, measure_on_delivery=Basis.Z
        ) as (_, head):
            opened = time.perf_counter()
            run.open_s = opened - t
            # Bounded: a circuit that stalls or ends early is reported with what it delivered.
            with trio.move_on_after(RUN_LIMIT_S) as limit:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read, "alice", head)
                    nursery.start_soon(read, "bob", tail)
            run.stalled = limit.cancelled_caught
            run.seconds = time.perf_counter() - opened
    both = sorted(set(halves["alice"]) & set(halves["bob"]))
    run.pairs = len(both)
    for i in both:
        a, b = halves["alice"][i], halves["bob"][i]
        p = z_agreement(list(a.weights), measure_error)
        run.expected += p
        run.variance += p * (1 - p)
        run.agree += a.outcome == b.outcome
        run.fidelity += a.fidelity_estimate
    run.fidelity /= max(run.pairs, 1)
    return run


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
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--min-fidelity", type=float, default=0.7)
    parser.add_argument("--topology", type=Path, default=ROOT / "examples" / "chain4.toml")
    parser.add_argument("--time-scale", default="0.1", help="passed to qnet up (default 0.1)")
    parser.add_argument(
        "--keep", help="run the last network from this run directory and leave it up"
    )
    a = parser.parse_args()

    topology = load_topology(a.topology)
    names = topology.node_names
    head, tail = names[0], names[-1]
    measure_error = max(n.params.measure_error for n in topology.nodes)
    rates = []
    failed = False
    for k in range(a.runs):
        keep = a.keep if a.keep and k == a.runs - 1 else None
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(keep or tmp)
            qnet("up", a.topology, "--run-dir", run_dir, "--time-scale", a.time_scale)
            try:
                state = json.loads((run_dir / "state.json").read_text())
                pids = {n: int(r["pid"]) for n, r in state["nodes"].items()}
                pids["channel"] = int(state["channel"]["pid"])
                before = {n: cpu_seconds(p) for n, p in pids.items()}
                run = trio.run(
                    partial(
                        circuit_run,
                        state["nodes"][head]["address"],
                        state["nodes"][tail]["address"],
                        pairs=a.pairs,
                        min_fidelity=a.min_fidelity,
                        measure_error=measure_error,
                    )
                )
                run.cpu = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
            finally:
                if keep is None:
                    qnet("down", "--run-dir", run_dir)
        rates.append(run.rate)
        ok = run.correlation_ok()
        failed |= not ok
        n = max(run.pairs, 1)
        cpu = ", ".join(f"{name} {s / n * 1e3:.1f}" for name, s in run.cpu.items())
        print(
            f"  run: {run.rate:.0f} pairs/s ({run.pairs} pairs in {run.seconds:.2f} s, opened in"
            f" {run.open_s * 1e3:.0f} ms; Z agreement {run.agree / n:.3f}, predicted"
            f" {run.expected / n:.3f}{'' if ok else ' FAILED'}; mean fidelity estimate"
            f" {run.fidelity:.3f}{'; STALLED at the time limit' if run.stalled else ''})"
        )
        print(f"       CPU ms per pair: {cpu}; total {sum(run.cpu.values()) / n * 1e3:.1f}")
        for name, why in sorted(run.closed.items()):
            print(f"       {name}: {why}")
    print(
        f"end-to-end pairs {head} → {tail} ({a.topology.name}, time scale {a.time_scale},"
        f" min_fidelity {a.min_fidelity}), both halves delivered and measured (Z on delivery):"
        f" median {statistics.median(rates):.0f} pairs/s over {a.runs} runs of {a.pairs}"
    )
    if failed:
        raise SystemExit("measured correlations do not match the predicted Bell weights")


if __name__ == "__main__":
    main()
