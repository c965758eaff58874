"""Soak: many concurrent application connections over `qnet up` daemons, for a bounded time.

`qnet up TOPOLOGY` (chain4 by default: alice – r1 – r2 – bob), then one application handle
per node (``qnet.open_node``) and N connections spread over every pair of nodes (connection k
joins the k-th pair, round robin; the far end listens on port 1000 + k). Until the duration
is up, each connection repeats a round: both ends take --pairs measure-directly pairs
(``epr_measure``), then each end sends a message and reads the other's. Every call is bounded
(--call-timeout-s); a call that fails or times out counts as an error and ends that
connection. Printed: connections, duration, rounds, pairs, messages, errors (by type), the
daemons' resident memory (VmRSS) at the start and the end, and qnet-channeld's qubits in use
at the end (once every connection closed).

    python tests/bench/soak.py                       # 50 connections, 60 s, chain4
    python tests/bench/soak.py --connections 10 --duration-s 15 --topology examples/star4.toml

Exit status 1 if any error occurred. tests/process/test_soak_process.py runs a short version.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

import qnet
from qnet.api.aio import AsyncNode, AsyncSocket
from qnet.channel.client import open_channel_client

ROOT = Path(__file__).resolve().parents[2]
BASE_PORT = 1000
#: Wall seconds the backend's qubit count may take to settle once every connection closed.
SETTLE_S = 10.0


@dataclass
class SoakResult:
    connections: int
    duration_s: float
    rounds: int = 0
    pairs: int = 0
    messages: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: One line per failed connection: which, between which nodes, in which call, and why.
    failures: list[str] = field(default_factory=list)
    rss_start: dict[str, int] = field(default_factory=dict)
    rss_end: dict[str, int] = field(default_factory=dict)
    qubits_end: int = -1
    qubits_by_node_end: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        def mib(rss: dict[str, int]) -> str:
            return ", ".join(f"{k} {v / 2**20:.1f}" for k, v in rss.items())

        return [
            f"connections        {self.connections}",
            f"duration           {self.duration_s:.1f} s",
            f"rounds             {self.rounds}",
            f"pairs              {self.pairs} ({self.pairs / self.duration_s:.1f}/s)",
            f"messages           {self.messages}",
            f"errors             {sum(self.errors.values())} {dict(self.errors)}",
            f"RSS start (MiB)    {mib(self.rss_start)}",
            f"RSS end (MiB)      {mib(self.rss_end)}",
            f"channeld qubits    {self.qubits_end} in use at the end {self.qubits_by_node_end}",
        ]


def soak_topology(source: Path, memory_qubits: int, out_dir: Path) -> Path:
    """``source`` with ``memory_qubits`` per node (the first ``memory_qubits`` setting, that of
    ``[defaults.node]``), written to ``out_dir``. Every connection opens a circuit, which
    reserves memory at every node of its path (2 qubits at an end, 4 at a repeater): the
    examples' 8 qubits admit a handful of connections, and refuse the rest with NoMemory."""
    text, count = re.subn(
        r"^memory_qubits = \d+$",
        f"memory_qubits = {memory_qubits}",
        source.read_text(),
        count=1,
        flags=re.M,
    )
    if count != 1:
        raise ValueError(f"{source} sets no memory_qubits in [defaults.node]")
    out = out_dir / f"soak-{source.name}"
    out.write_text(text)
    return out.resolve()


def vm_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (VmRSS of /proc/PID/status); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def daemon_rss(run_dir: Path) -> dict[str, int]:
    state = json.loads((run_dir / "state.json").read_text())
    out = {name: vm_rss(int(d["pid"])) for name, d in state["nodes"].items()}
    out["channel"] = vm_rss(int(state["channel"]["pid"]))
    return out


async def _connect(
    src: AsyncNode, dst: AsyncNode, port: int, timeout_s: float
) -> tuple[AsyncSocket, AsyncSocket]:
    srv = dst.socket()
    srv.settimeout(timeout_s)
    await srv.bind(port)
    await srv.listen()
    cli = src.socket()
    cli.settimeout(timeout_s)
    box: dict[str, AsyncSocket] = {}

    async def accept() -> None:
        box["conn"], _ = await srv.accept()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        await cli.connect((dst.name, port), min_fidelity=0.5)
    await srv.close()
    conn = box["conn"]
    conn.settimeout(timeout_s)
    return cli, conn


async def _connection(
    k: int,
    src: AsyncNode,
    dst: AsyncNode,
    until: float,
    result: SoakResult,
    pairs: int,
    timeout_s: float,
) -> None:
    step, done = "connect", 0
    try:
        cli, conn = await _connect(src, dst, BASE_PORT + k, timeout_s)
        while trio.current_time() < until:
            step = f"round {done}: epr_measure"
            got: dict[str, list[int]] = {}

            async def take(name: str, sock: AsyncSocket, got: dict[str, list[int]] = got) -> None:
                got[name] = await sock.epr_measure(pairs)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, "a", cli)
                nursery.start_soon(take, "b", conn)
            assert len(got["a"]) == len(got["b"]) == pairs
            result.pairs += pairs
            step = "messages"
            message = b"round %d of connection %d" % (result.rounds, k)
            await cli.send(message)
            await conn.send(message[::-1])
            if await conn.recv() != message or await cli.recv() != message[::-1]:
                raise AssertionError(f"connection {k}: a message came back wrong")
            result.messages += 2
            result.rounds += 1
            done += 1
        await cli.close()
        await conn.close()
    except Exception as exc:
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        result.errors[type(exc).__name__] += 1
        line = f"connection {k} ({src.name} → {dst.name}), {step}: {type(exc).__name__}: {exc}"
        result.failures.append(line)
        print(line)


async def run_soak(
    run_dir: Path,
    *,
    connections: int = 50,
    duration_s: float = 60.0,
    pairs: int = 2,
    call_timeout_s: float = 30.0,
) -> SoakResult:
    """Run the soak against the network recorded in ``run_dir`` (already up)."""
    state = json.loads((run_dir / "state.json").read_text())
    names = list(state["nodes"])
    ends = list(itertools.combinations(names, 2))
    result = SoakResult(connections, duration_s)
    result.rss_start = daemon_rss(run_dir)
    started = trio.current_time()
    async with trio.open_nursery() as handles:
        nodes: dict[str, AsyncNode] = {}

        async def hold(name: str, *, task_status: trio.TaskStatus[AsyncNode]) -> None:
            async with qnet.open_node(name, run_dir=str(run_dir)) as node:
                task_status.started(node)
                await trio.sleep_forever()

        for name in names:
            nodes[name] = await handles.start(hold, name)
        until = started + duration_s
        async with trio.open_nursery() as workers:
            for k in range(connections):
                a, b = ends[k % len(ends)]
                workers.start_soon(
                    _connection, k, nodes[a], nodes[b], until, result, pairs, call_timeout_s
                )
        handles.cancel_scope.cancel()
    result.duration_s = trio.current_time() - started
    result.rss_end = daemon_rss(run_dir)
    async with open_channel_client(state["channel"]["address"]) as backend:
        # The daemons free a closed session's qubits as its end reaches them, and the link
        # layers give back what they had armed for the closed circuits: wait for it, bounded.
        with trio.move_on_after(SETTLE_S):
            while (health := await backend.health()).qubits_in_use:  # noqa: ASYNC110
                await trio.sleep(0.1)  # no event to wait on in another process
        result.qubits_end = health.qubits_in_use
        result.qubits_by_node_end = dict(health.qubits_by_node)
    return result


def _qnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qnet", *args], capture_output=True, text=True, check=False
    )


def _log_notes(logs: Path, limit: int = 20) -> list[str]:
    """The daemons' warnings and link changes, the first ``limit`` (to explain errors)."""
    notes = []
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line or "is down" in line:
                notes.append(f"  {log.stem}: {line}")
    return sorted(notes, key=lambda n: n.split(": ", 1)[1])[:limit]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topology", type=Path, default=ROOT / "examples" / "chain4.toml")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--pairs", type=int, default=2, help="measure-directly pairs per round")
    p.add_argument("--call-timeout-s", type=float, default=30.0)
    p.add_argument("--time-scale", default="0.1")
    p.add_argument(
        "--memory-qubits",
        type=int,
        help="memory qubits per node (default: 4 per connection, plus 16)",
    )
    a = p.parse_args()
    memory = a.memory_qubits or 4 * a.connections + 16
    with tempfile.TemporaryDirectory(prefix="qnet-soak-") as tmp:
        run_dir = Path(tmp) / "run"
        topology = soak_topology(a.topology, memory, Path(tmp))
        up = _qnet("up", str(topology), "--run-dir", str(run_dir), "--time-scale", a.time_scale)
        if up.returncode != 0:
            print(up.stderr, file=sys.stderr)
            return 1
        try:
            result = trio.run(
                lambda: run_soak(
                    run_dir,
                    connections=a.connections,
                    duration_s=a.duration_s,
                    pairs=a.pairs,
                    call_timeout_s=a.call_timeout_s,
                )
            )
        finally:
            _qnet("down", "--run-dir", str(run_dir))
            notes = _log_notes(run_dir / "logs")
    print(f"soak of {a.topology.name} with {memory} memory qubits per node:")
    print("\n".join(result.lines()))
    if result.errors and notes:
        print("what the daemons logged (warnings, links going down):")
        print("\n".join(notes))
    return 1 if result.errors else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"wall time          {time.monotonic() - started:.1f} s")
    sys.exit(code)
