"""Benchmark of the application API over `qnet up` daemons (the Application service).

`qnet up examples/chain4.toml` (alice – r1 – r2 – bob, 5 km Barrett–Kok links, time scale
0.1), then an application on alice and one on bob, each its own ``RemoteBackend`` session (both
in this process), connected by one transport connection. Measured, in wall-clock terms:

- epr: pairs delivered to the applications per second (both ends call ``epr`` and measure the
  half, --window calls in flight per end);
- epr_measure: measure-directly pairs per second (both ends ask in chunks of --chunk);
- teleports per second (alice allocates, applies X, sends; bob receives and measures, with
  --window teleports in flight);
- the latency of one API call to the local daemon: allocate + free round trip, median and p90.

After each figure, the CPU time each process spent per pair or teleport (daemons from /proc,
the bench client, which runs both applications, from ``os.times``): on a shared machine the
wall rates vary with the load, the CPU per unit much less. Then, per pair or teleport, the link
pairs each link made (above 1, the surplus was made and freed unused) and the peer messages
and gRPC batches all daemons sent (from the daemons' Admin counters).

Each figure checks what it counts (Z correlations of the pairs, teleported |1⟩ read as 1).

    python tests/bench/bench_app_daemons.py --pairs 300 --teleports 150
    python tests/bench/bench_app_daemons.py --only teleport --run-dir /tmp/run   # py-spy the
                                                        # qnetd PIDs in /tmp/run/state.json

Issue targets: ≥ 100 pairs/s and ≥ 50 teleports/s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from qnet.api.remote import RemoteBackend, RemoteSocket, open_remote
from qnet.daemon.control import open_daemon_client
from qnet.daemon.report import gather_links
from qnet.daemon.rundir import NetworkState

ROOT = Path(__file__).resolve().parents[2]
PORT = 7


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time so far of a process (None: this one)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time per process over one figure, per unit counted."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.pids: dict[str, int | None] = {
            name: int(record["pid"]) for name, record in state["nodes"].items()
        }
        if state.get("channel"):
            self.pids["channeld"] = int(state["channel"]["pid"])
        self.pids["client"] = None
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def report(self, units: int, unit: str) -> str:
        spent = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        parts = " ".join(f"{name} {s / units * 1e3:.2f}" for name, s in spent.items())
        return f"  CPU ms per {unit}: {parts}; total {sum(spent.values()) / units * 1e3:.2f}"


class LinkMeter:
    """Per unit over one figure: link pairs made on each link (above one per end-to-end pair,
    the surplus was made and then freed unused) and the peer messages and gRPC batches all
    daemons sent (every message a daemon relays costs it a receive and a send)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = NetworkState.from_json(state)
        self._start: dict[str, int] = {}

    async def _counts(self) -> dict[str, int]:
        rows, _ = await gather_links(self.state)
        counts = {row.link_id: row.pairs for row in rows}
        counts["messages"] = counts["batches"] = 0

        async def one(name: str, address: str) -> None:
            async with open_daemon_client(address, self.state.client_tls(name)) as client:
                resp = await client.counters()
            for peer in resp.peers:
                counts["messages"] += peer.messages_sent
                counts["batches"] += peer.batches_sent

        async with trio.open_nursery() as nursery:
            for name, record in self.state.nodes.items():
                nursery.start_soon(one, name, record.address)
        return counts

    async def start(self) -> None:
        self._start = await self._counts()

    async def report(self, units: int, unit: str) -> str:
        now = await self._counts()
        per = {key: (now[key] - self._start.get(key, 0)) / units for key in now}
        links = " ".join(f"{key} {per[key]:.2f}" for key in sorted(now) if "|" in key)
        return (
            f"  per {unit}: link pairs {links}; peer messages {per['messages']:.1f}"
            f" in {per['batches']:.1f} batches"
        )


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


async def connect(
    alice: RemoteBackend, bob: RemoteBackend, min_fidelity: float
) -> tuple[RemoteSocket, RemoteSocket]:
    srv = bob.socket()
    await srv.bind(PORT)
    await srv.listen()
    cli = alice.socket()
    accepted: list[RemoteSocket] = []

    async def take() -> None:
        accepted.append((await srv.accept())[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await cli.connect(("bob", PORT), min_fidelity=min_fidelity)
    await srv.close()
    return cli, accepted[0]


async def epr_rate(
    ends: list[tuple[RemoteBackend, RemoteSocket]], pairs: int, window: int
) -> tuple[float, float]:
    """(pairs/s, Z agreement) for ``pairs`` epr pairs taken and measured at both ends."""
    outcomes: list[dict[int, int]] = [{}, {}]

    async def end(i: int, backend: RemoteBackend, sock: RemoteSocket) -> None:
        left = [pairs]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                q = await sock.epr()
                outcomes[i][q.number] = await backend.measure(q.id, "Z")

        async with trio.open_nursery() as nursery:
            for _ in range(window):
                nursery.start_soon(worker)

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i, (backend, sock) in enumerate(ends):
            nursery.start_soon(end, i, backend, sock)
    elapsed = time.perf_counter() - t
    common = outcomes[0].keys() & outcomes[1].keys()
    agree = sum(outcomes[0][k] == outcomes[1][k] for k in common) / max(1, len(common))
    return pairs / elapsed, agree


async def epr_measure_rate(
    socks: list[RemoteSocket], pairs: int, chunk: int
) -> tuple[float, float]:
    got: list[list[int]] = [[], []]

    async def end(i: int, sock: RemoteSocket) -> None:
        while len(got[i]) < pairs:
            got[i] += await sock.epr_measure(min(chunk, pairs - len(got[i])), "Z")

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i, sock in enumerate(socks):
            nursery.start_soon(end, i, sock)
    elapsed = time.perf_counter() - t
    agree = sum(a == b for a, b in zip(got[0], got[1], strict=True)) / pairs
    return pairs / elapsed, agree


async def teleport_rate(
    alice: RemoteBackend,
    cli: RemoteSocket,
    bob: RemoteBackend,
    conn: RemoteSocket,
    n: int,
    window: int,
) -> tuple[float, float]:
    """(teleports/s, fraction of |1⟩ read as 1)."""
    ones = [0]
    limit = trio.Semaphore(window)

    async def send_one() -> None:
        try:
            q = await alice.allocate()
            await alice.gate("x", (q.id,))
            await cli.send_qubit(q.id)
        finally:
            limit.release()

    async def send_all() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                await limit.acquire()
                nursery.start_soon(send_one)

    async def receive_all() -> None:
        for _ in range(n):
            q = await conn.recv_qubit()
            ones[0] += await bob.measure(q.id, "Z")

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        nursery.start_soon(receive_all)
    return n / (time.perf_counter() - t), ones[0] / n


async def call_latency(alice: RemoteBackend, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        q = await alice.allocate()
        await alice.free(q.id)
        out.append(time.perf_counter() - t)
    return out


async def bench(state: dict[str, Any], a: argparse.Namespace) -> None:
    nodes = state["nodes"]
    cpu = CpuMeter(state)
    links = LinkMeter(state)
    async with (
        open_remote(nodes["alice"]["address"]) as alice,
        open_remote(nodes["bob"]["address"]) as bob,
    ):
        latencies = await call_latency(alice, a.calls)
        latencies.sort()
        median_ms = statistics.median(latencies) * 1e3
        p90_ms = latencies[int(0.9 * len(latencies))] * 1e3
        print(
            f"allocate+free round trip to the local daemon: median {median_ms:.2f} ms,"
            f" p90 {p90_ms:.2f} ms ({a.calls} calls)"
        )
        t = time.perf_counter()
        cli, conn = await connect(alice, bob, a.min_fidelity)
        print(f"connect (handshake + circuit alice→bob): {(time.perf_counter() - t) * 1e3:.0f} ms")
        if "epr" in a.only:
            cpu.start()
            await links.start()
            rate, agree = await epr_rate([(alice, cli), (bob, conn)], a.pairs, a.window)
            print(
                f"epr: {rate:.1f} pairs/s delivered to both apps"
                f" (Z agreement {agree:.3f}, {a.pairs} pairs)"
            )
            print(cpu.report(a.pairs, "pair"))
            print(await links.report(a.pairs, "pair"))
        if "epr_measure" in a.only:
            cpu.start()
            await links.start()
            rate, agree = await epr_measure_rate([cli, conn], a.pairs, a.chunk)
            print(f"epr_measure: {rate:.1f} pairs/s (Z agreement {agree:.3f}, {a.pairs} pairs)")
            print(cpu.report(a.pairs, "pair"))
            print(await links.report(a.pairs, "pair"))
        if "teleport" in a.only:
            cpu.start()
            await links.start()
            rate, ones = await teleport_rate(alice, cli, bob, conn, a.teleports, a.window)
            print(
                f"teleport: {rate:.1f} qubits/s (|1⟩ read as 1: {ones:.3f}, {a.teleports} qubits)"
            )
            print(cpu.report(a.teleports, "teleport"))
            print(await links.report(a.teleports, "teleport"))
        await cli.close()
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=ROOT / "examples" / "chain4.toml", type=Path)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--teleports", type=int, default=150)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--window", type=int, default=2, help="calls in flight per end")
    parser.add_argument("--chunk", type=int, default=50, help="epr_measure pairs per call")
    parser.add_argument("--min-fidelity", type=float, default=0.6)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["epr", "epr_measure", "teleport"],
        default=["epr", "epr_measure", "teleport"],
        help="the figures to measure (in this order, on one connection)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="run directory for `qnet up` (default: a temporary one); its state.json names"
        " the daemons' PIDs, e.g. for py-spy",
    )
    a = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so `qnet down` below runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="qnet-bench-") as tmp:
        run_dir = a.run_dir or Path(tmp) / "run"
        try:
            qnet("up", a.topology, "--run-dir", run_dir)
            state = json.loads((run_dir / "state.json").read_text())
            print(f"network {state.get('network')} up; daemons {os.cpu_count()} CPUs here")
            trio.run(bench, state, a)
        finally:
            subprocess.run(
                [sys.executable, "-m", "qnet", "down", "--run-dir", str(run_dir)],
                capture_output=True,
                timeout=60,
                check=False,
            )


if __name__ == "__main__":
    main()
