"""Benchmark of the physical layer: core operations in-process, and through qnet-channeld.

Prints, as the median of --runs runs: one-qubit gates/s, two-qubit gates/s on a 2-qubit
group, and "generate a pair + measure both halves"/s, first on the in-process ChannelCore and
then over gRPC against a qnet-channeld child process (one client, sequential calls).

    python tests/bench/bench_channel.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import trio

from qnet.channel.client import NodeSession, open_channel_client
from qnet.physical.channel_core import ChannelCore
from qnet.physical.gates import Basis, GateName
from qnet.physical.params import LinkParams, NodeParams
from qnet.runtime.processes import start_channeld
from qnet.v1 import channel_pb2 as pb

NOISY = NodeParams(memory_qubits=64, t1_s=10, t2_s=1)
NOISELESS = NodeParams(memory_qubits=64)
MEMORY = NOISY


def _core() -> ChannelCore:
    core = ChannelCore(seed=1)
    for name in ("alice", "bob"):
        core.register_node(name, MEMORY, 0)
    core.declare_link("alice", "bob", LinkParams(length_km=10), 0)
    return core


def core_gate_1q(n: int) -> float:
    core = _core()
    q = core.allocate("alice", 2, 0)
    core.apply_gate("alice", GateName.CNOT, q, 0.0, 0)  # a 2-qubit group, as in real use
    t = time.perf_counter()
    for i in range(n):
        core.apply_gate("alice", GateName.H, q[:1], 0.0, i)
    return n / (time.perf_counter() - t)


def core_gate_2q(n: int) -> float:
    core = _core()
    q = core.allocate("alice", 2, 0)
    t = time.perf_counter()
    for i in range(n):
        core.apply_gate("alice", GateName.CNOT, q, 0.0, i)
    return n / (time.perf_counter() - t)


def core_generate_measure(n: int) -> float:
    core = _core()
    qa, qb = core.allocate("alice", 1, 0), core.allocate("bob", 1, 0)
    now = 0
    t = time.perf_counter()
    for _ in range(n):
        core.start_generation("alice", "bob", qa, now)
        core.start_generation("bob", "alice", qb, now)
        deadline = core.next_deadline()
        assert deadline is not None
        now = deadline
        core.advance(now)
        for event in core.pop_events():
            core.measure(event.node, event.qubit, Basis.Z, now, keep=True)
    return n / (time.perf_counter() - t)


async def _grpc_rates(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        # Physical time runs 100× wall time so that heralds are never what the client waits for.
        daemon = await nursery.start(start_channeld, ["--time-scale", "100"])
        async with open_channel_client(daemon.address) as client:
            alice = await client.register("alice", NodeParams(memory_qubits=64))
            bob = await client.register("bob", NodeParams(memory_qubits=64))
            await alice.declare_link("bob", LinkParams(length_km=10))
            q = await alice.allocate(2)
            await alice.gate(GateName.CNOT, *q)
            out["grpc 1q gate/s"] = await _timed(n, lambda: alice.gate(GateName.H, q[0]))
            out["grpc 2q gate/s"] = await _timed(n, lambda: alice.gate(GateName.CNOT, *q))
            out["grpc 2q gate/s, Execute batches of 20"] = await _grpc_batched(alice, q, n, 20)
            out["grpc generate+measure/s"] = await _grpc_pairs(alice, bob, n // 4)
        nursery.cancel_scope.cancel()
    return out


async def _timed(n: int, op: Callable[[], object]) -> float:
    t = time.perf_counter()
    for _ in range(n):
        await op()  # type: ignore[misc]
    return n / (time.perf_counter() - t)


async def _grpc_batched(alice: NodeSession, q: list[int], n: int, size: int) -> float:
    cnot = pb.Operation(gate=pb.GateOp(gate=pb.GATE_CNOT, qubits=q))
    batch = [cnot] * size
    t = time.perf_counter()
    for _ in range(n // size):
        await alice.execute(batch)
    return (n // size) * size / (time.perf_counter() - t)


async def _grpc_pairs(alice: NodeSession, bob: NodeSession, n: int) -> float:
    """Arm, wait for both heralds, measure both halves: 6 RPCs and 2 stream messages a pair."""
    (qa,), (qb,) = await alice.allocate(1), await bob.allocate(1)
    async with alice.heralds() as ha, bob.heralds() as hb:
        t = time.perf_counter()
        for _ in range(n):
            await alice.start_generation("bob", [qa])
            await bob.start_generation("alice", [qb])
            ea, eb = await anext(ha), await anext(hb)
            await alice.measure(ea.qubit, Basis.Z, keep=True)
            await bob.measure(eb.qubit, Basis.Z, keep=True)
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ops", type=int, default=20_000, help="operations per in-process run")
    ap.add_argument("--grpc-ops", type=int, default=2_000, help="operations per gRPC run")
    a = ap.parse_args()
    global MEMORY
    results: dict[str, list[float]] = {}
    for _ in range(a.runs):
        for memory, label in ((NOISELESS, "noiseless"), (NOISY, "T1/T2 memory")):
            MEMORY = memory
            for name, fn in (
                ("1q gate/s", core_gate_1q),
                ("2q gate/s", core_gate_2q),
                ("generate+measure/s", core_generate_measure),
            ):
                results.setdefault(f"core {name} ({label})", []).append(fn(a.ops))
        for name, rate in trio.run(_grpc_rates, a.grpc_ops).items():
            results.setdefault(name, []).append(rate)
    print(f"median of {a.runs} runs (min–max):")
    for name, values in results.items():
        print(
            f"  {name:40} {statistics.median(values):>10,.0f}"
            f"   ({min(values):,.0f}–{max(values):,.0f})"
        )


if __name__ == "__main__":
    main()
