"""Benchmark of the link layer through `qnet up` daemons on this machine.

1. `qnet up` of a ring of ten nodes (examples/ring10.toml) until every daemon is healthy and
   linked: wall time of the whole command (median of --runs), and each daemon's resident
   memory (VmRSS) once up.
2. Neighbour KEEP pairs delivered to a link-layer user and measured at both ends, through the
   daemons of examples/two_nodes.toml (memory raised to --memory-qubits): alice's client
   issues CREATE requests (LinkCreate, --window calls of --batch pairs open at once) and
   bob's client watches the link (LinkEvents). Pairs per wall second, median of --runs runs
   of --pairs pairs, for each way of measuring (--measure):
   - delivery: both clients ask for measure_on_delivery Z; the daemons measure each KEEP
     half in the link's own backend requests as they deliver it, and stream the outcome;
   - client: the clients measure what they received with MeasureQubits calls (everything that
     arrived while the previous call ran), in Z for even herald sequences and X for odd.
   Every pair measured at both ends is checked: both ends name the same Bell index, and per
   basis the outcomes agree with it at least as often as the fidelity estimates imply (a
   wrong index or basis would agree at the rate of a coin); the run fails otherwise.

    python tests/bench/bench_link_daemons.py --runs 3 --pairs 600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import trio

from qnet.channel.wire import BASIS_FROM_WIRE, BASIS_TO_WIRE
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
#: A correlation check fails when the observed agreement is this many standard errors below
#: its lower bound (a correct stack fails it with probability about 3·10⁻⁷).
Z_SCORE = 5.0


def agree_if(basis: Basis, bell_index: int) -> bool:
    """Whether the two halves of Bell state ``bell_index`` (x + 2z) give equal outcomes when
    both are measured in ``basis`` (Z: iff x = 0; X: iff z = 0)."""
    flip = bell_index & 1 if basis is Basis.Z else bell_index >> 1
    return flip == 0


@dataclasses.dataclass
class Correlation:
    """Pairs measured in one basis at both ends: how often the outcomes agreed with the Bell
    index, against the link layer's fidelity estimates."""

    pairs: int = 0
    agree: int = 0
    fidelity: float = 0.0

    def bound(self, measure_error: float) -> float:
        """Lower bound of the expected agreement: the Bell-state part of each pair (weight
        F) agrees, read through two outcome flips of probability e each."""
        e = measure_error
        return self.fidelity / max(self.pairs, 1) * ((1 - e) ** 2 + e**2)

    def ok(self, measure_error: float) -> bool:
        if not self.pairs:
            return True
        p = self.bound(measure_error)
        sigma = math.sqrt(max(p * (1 - p), 1e-12) / self.pairs)
        return self.agree / self.pairs >= p - Z_SCORE * sigma


class Tally:
    def __init__(self, target: int) -> None:
        self.target = target
        self.stalled = False
        self.alice = 0
        self.bob = 0
        self.errors: dict[str, int] = {}
        self.fidelity = 0.0
        self.by_basis: dict[Basis, Correlation] = {}
        #: pair -> (outcome, basis, Bell index, fidelity estimate) of the first end measured
        self.outcomes: dict[tuple[str, int], tuple[int, Basis, int, float]] = {}
        self.done = trio.Event()

    def match(self, ok: pb.LinkOk, outcome: int, basis: Basis) -> None:
        pair = (ok.link_id, ok.sequence)
        other = self.outcomes.pop(pair, None)
        if other is None:
            self.outcomes[pair] = (outcome, basis, ok.bell_index, ok.fidelity_estimate)
            return
        o2, b2, bell2, fidelity = other
        if b2 is not basis or bell2 != ok.bell_index:
            raise SystemExit(f"pair {pair}: the ends disagree on basis or Bell index")
        c = self.by_basis.setdefault(basis, Correlation())
        c.pairs += 1
        c.fidelity += fidelity
        c.agree += (outcome == o2) == agree_if(basis, ok.bell_index)

    def count(self, node: str, ok: pb.LinkOk) -> None:
        if node == "alice":
            self.alice += 1
            self.fidelity += ok.fidelity_estimate
        else:
            self.bob += 1
        if self.alice >= self.target and self.bob >= self.target:
            self.done.set()


def basis_of(ok: pb.LinkOk) -> Basis:
    """Client measurement: Z for even herald sequences, X for odd, the same at both ends."""
    return Basis.X if ok.sequence & 1 else Basis.Z


async def _measured_on_delivery(node: str, ok: pb.LinkOk, tally: Tally) -> None:
    if not ok.measured:
        raise SystemExit(f"{node}: a KEEP pair arrived unmeasured despite measure_on_delivery")
    tally.count(node, ok)
    tally.match(ok, ok.outcome, BASIS_FROM_WIRE[ok.basis])


class ClientMeasurer:
    """Measures the halves one end's client receives, every half that arrived while the
    previous MeasureQubits call ran in the next one."""

    def __init__(self, client: DaemonClient, node: str, tally: Tally) -> None:
        self.client, self.node, self.tally = client, node, tally
        self.send, self.recv = trio.open_memory_channel[pb.LinkOk](math.inf)

    async def run(self) -> None:
        async for first in self.recv:
            oks = [first]
            while True:
                try:
                    oks.append(self.recv.receive_nowait())
                except trio.WouldBlock:
                    break
            bases = [basis_of(ok) for ok in oks]
            outcomes = await self.client.measure_qubits([ok.qubit for ok in oks], bases)
            for ok, outcome, basis in zip(oks, outcomes, bases, strict=True):
                self.tally.count(self.node, ok)
                self.tally.match(ok, outcome, basis)


async def _alice_slot(
    alice: DaemonClient,
    request: pb.LinkCreateRequest,
    measurer: ClientMeasurer | None,
    tally: Tally,
) -> None:
    while tally.alice < tally.target:
        async with alice.link_create(request) as events:
            async for event in events:
                case = event.WhichOneof("event")
                if case == "ok" and measurer is None:
                    await _measured_on_delivery("alice", event.ok, tally)
                elif case == "ok" and measurer is not None:
                    measurer.send.send_nowait(event.ok)
                elif case == "err":
                    name = pb.LinkErrorCode.Name(event.err.code)
                    tally.errors[name] = tally.errors.get(name, 0) + 1


async def _bob_side(
    events: AsyncIterator[pb.LinkEvent], measurer: ClientMeasurer | None, tally: Tally
) -> None:
    async for event in events:
        if event.WhichOneof("event") != "ok":
            continue
        if measurer is None:
            await _measured_on_delivery("bob", event.ok, tally)
        else:
            measurer.send.send_nowait(event.ok)


async def _until_done(tally: Tally, scope: trio.CancelScope) -> None:
    await tally.done.wait()
    scope.cancel()


async def keep_rate(
    alice_address: str,
    bob_address: str,
    *,
    pairs: int,
    window: int,
    batch: int,
    min_fidelity: float,
    on_delivery: bool,
) -> tuple[float, Tally]:
    tally = Tally(pairs)
    z = Basis.Z if on_delivery else None
    request = pb.LinkCreateRequest(
        remote="bob", number=batch, kind=pb.PAIR_KIND_KEEP, min_fidelity=min_fidelity
    )
    if on_delivery:
        request.measure_on_delivery = BASIS_TO_WIRE[Basis.Z]
    async with (
        open_daemon_client(alice_address) as alice,
        open_daemon_client(bob_address) as bob,
        bob.link_events("alice", measure_on_delivery=z) as far,
    ):
        near_m = None if on_delivery else ClientMeasurer(alice, "alice", tally)
        far_m = None if on_delivery else ClientMeasurer(bob, "bob", tally)
        t = time.perf_counter()
        # Bounded: a run that stalls (a request the link layer never finishes) is reported as
        # such, with the pairs it got, instead of hanging the benchmark.
        with trio.move_on_after(RUN_LIMIT_S) as limit:
            async with trio.open_nursery() as nursery:
                # Reading stops once both ends measured their pairs; the requests still open
                # are cancelled when their calls end, and what they delivered is freed.
                nursery.start_soon(_until_done, tally, nursery.cancel_scope)
                for m in (near_m, far_m):
                    if m is not None:
                        nursery.start_soon(m.run)
                nursery.start_soon(_bob_side, far, far_m, tally)
                for _ in range(window):
                    nursery.start_soon(_alice_slot, alice, request, near_m, tally)
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
    parser.add_argument("--window", type=int, default=2, help="LinkCreate calls open at once")
    parser.add_argument("--batch", type=int, default=100, help="pairs per LinkCreate")
    parser.add_argument("--min-fidelity", type=float, default=0.85)
    parser.add_argument(
        "--measure",
        choices=["delivery", "client", "both"],
        default="both",
        help="delivery: measure_on_delivery (Z); client: MeasureQubits calls (Z and X)",
    )
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

    modes = ["delivery", "client"] if a.measure == "both" else [a.measure]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--time-scale", str(a.time_scale)] if a.time_scale else []
        top = load_topology(ROOT / "examples" / "two_nodes.toml")
        nodes_ = tuple(
            dataclasses.replace(
                n, params=dataclasses.replace(n.params, memory_qubits=a.memory_qubits)
            )
            for n in top.nodes
        )
        measure_error = max(n.params.measure_error for n in top.nodes)
        topology_file = Path(tmp) / "two_nodes_bench.toml"
        topology_file.write_text(topology_to_toml(dataclasses.replace(top, nodes=nodes_)))
        for mode in modes:
            rates = []
            for _ in range(a.runs):
                # A fresh network per run: halves the previous run's client never read stay
                # held in the daemon (until their lease runs out) and would skew the next run.
                qnet("up", topology_file, "--run-dir", tmp, *extra)
                try:
                    state = json.loads((Path(tmp) / "state.json").read_text())
                    nodes = state["nodes"]
                    rate, tally = trio.run(
                        partial(
                            keep_rate,
                            nodes["alice"]["address"],
                            nodes["bob"]["address"],
                            pairs=a.pairs,
                            window=a.window,
                            batch=a.batch,
                            min_fidelity=a.min_fidelity,
                            on_delivery=mode == "delivery",
                        )
                    )
                finally:
                    qnet("down", "--run-dir", tmp)
                rates.append(rate)
                checks = []
                for basis, c in sorted(tally.by_basis.items(), key=lambda kv: kv[0].value):
                    ok = c.ok(measure_error)
                    failed |= not ok
                    checks.append(
                        f"{basis.value} agreement {c.agree / max(c.pairs, 1):.3f} of {c.pairs}"
                        f" (bound {c.bound(measure_error):.3f}{'' if ok else ', FAILED'})"
                    )
                n = max(tally.alice, 1)
                print(
                    f"  run: {rate:.0f} pairs/s ({tally.alice} pairs; {'; '.join(checks)};"
                    f" mean fidelity estimate {tally.fidelity / n:.3f};"
                    f"{' STALLED at the time limit;' if tally.stalled else ''}"
                    f" errors {tally.errors or 'none'})"
                )
            how = (
                "measured by the daemon on delivery (measure_on_delivery Z)"
                if mode == "delivery"
                else "measured by the clients (MeasureQubits, Z or X by sequence)"
            )
            print(
                f"KEEP pairs delivered at both ends, {how}, two_nodes with {a.memory_qubits}"
                f" memory qubits per node, min_fidelity {a.min_fidelity}:"
                f" median {statistics.median(rates):.0f} pairs/s"
                f" (window {a.window} x batch {a.batch}, time scale {state['time_scale']:g})"
            )
    if failed:
        raise SystemExit("measured correlations do not match the Bell indices")


if __name__ == "__main__":
    main()
