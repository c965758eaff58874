"""Benchmark of the link layer in qnet.sim: neighbour KEEP pairs delivered and measured.

For each topology, every link gets one KEEP request of --pairs pairs at once (two_nodes: one
link; chain4: all three links together). Each end's link-layer user measures its half in Z as
soon as its OK arrives. Printed, as the median of --runs runs (each a fresh network in its own
trio run on virtual time):

- pairs per CPU-second (time.process_time over the requests, network start-up excluded;
  target ≥ 1,000 pairs/s),
- simulated pairs per second (pairs / virtual time the requests took),
- mean fidelity estimate of the delivered pairs (the link layer's, which matches the oracle).

    python tests/bench/bench_link_sim.py --runs 5 --pairs 2000
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from qnet.link.events import CreateRequest, Kind, PairOk, UpperEvent
from qnet.physical.gates import Basis
from qnet.sim import SimNetwork, open_network
from qnet.sim import run as sim_run
from qnet.topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Result:
    pairs: int
    cpu_s: float
    sim_s: float
    fidelity_sum: float

    @property
    def per_cpu_s(self) -> float:
        return self.pairs / self.cpu_s

    @property
    def per_sim_s(self) -> float:
        return self.pairs / self.sim_s

    @property
    def mean_fidelity(self) -> float:
        return self.fidelity_sum / self.pairs


async def _user(
    net: SimNetwork,
    node: str,
    events: trio.MemoryReceiveChannel[UpperEvent],
    number: int,
    fidelities: list[float],
) -> None:
    """One end's link-layer user: measure each delivered half at once."""
    for _ in range(number):
        event = await events.receive()
        if not isinstance(event, PairOk) or event.qubit is None:
            raise RuntimeError(f"{node}: expected a KEEP pair, got {event}")
        await net.sessions[node].measure(event.qubit, Basis.Z)
        if node < event.pair_id[0].split("|")[1]:  # count each pair once, at the master
            fidelities.append(event.fidelity_estimate)


async def _one_run(topology_name: str, pairs: int, min_fidelity: float, seed: int) -> Result:
    topology = load_topology(EXAMPLES / f"{topology_name}.toml")
    fidelities: list[float] = []
    async with open_network(topology, seed=seed) as net:
        subs = [
            (link, end, net.node(end).subscribe(link.other(end)))
            for link in topology.links
            for end in (link.a, link.b)
        ]
        sim_start = net.now()
        cpu_start = time.process_time()
        for link in topology.links:
            request = CreateRequest(link.b, number=pairs, kind=Kind.KEEP, min_fidelity=min_fidelity)
            net.node(link.a).create(link.b, request)
        async with trio.open_nursery() as nursery:
            for _, end, events in subs:
                nursery.start_soon(_user, net, end, events, pairs, fidelities)
        cpu = time.process_time() - cpu_start
        sim = (net.now() - sim_start) * 1e-9
    total = pairs * len(topology.links)
    assert len(fidelities) == total
    return Result(total, cpu, sim, sum(fidelities))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per link per run")
    parser.add_argument("--min-fidelity", type=float, default=0.85)
    parser.add_argument("--topologies", nargs="+", default=["two_nodes", "chain4"])
    args = parser.parse_args()
    print(
        f"KEEP pairs delivered and measured at both ends, {args.pairs} per link per run,"
        f" min_fidelity {args.min_fidelity}; median of {args.runs} runs"
    )
    for name in args.topologies:
        results = [
            sim_run(partial(_one_run, name, args.pairs, args.min_fidelity, seed))
            for seed in range(1, args.runs + 1)
        ]
        per_cpu = statistics.median(r.per_cpu_s for r in results)
        spread = ", ".join(f"{r.per_cpu_s:.0f}" for r in results)
        print(
            f"{name:10s} {per_cpu:8.0f} pairs/CPU-s (runs: {spread});"
            f" {statistics.median(r.per_sim_s for r in results):8.0f} pairs/simulated s;"
            f" mean fidelity {statistics.median(r.mean_fidelity for r in results):.4f}"
        )


if __name__ == "__main__":
    main()
