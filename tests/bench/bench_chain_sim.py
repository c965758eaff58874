"""End-to-end pairs over a repeater chain in qnet.sim, side by side with SeQUeNCe.

Both simulate the same chain (tests/bench/README.md, "SeQUeNCe side-by-side"): 20 km links of
0.2 dB/km fibre, a midpoint station with 0.9-efficient detectors, Werner link pairs of fidelity
0.95, 400 µs attempts, depolarising memories with a 1 s coherence time, 4 memories at the ends
and 8 at repeaters, no gate or measurement noise, end-to-end fidelity target 0.5 (--target).
Each link attempts with up to 4 memory pairs at once (``multiplexing = 4``, --multiplexing), as
SeQUeNCe's harness does with the 4 memories it reserves per request on each side of a link;
the link layer keeps 4 qubits armed per end (``EgpConfig.pipeline``, 4 by default).
qnet runs a circuit from the first node to the last and counts pairs delivered at both ends
(and measured: each pair's true fidelity is read from the backend, then both halves are freed)
during ``--sim-s`` of simulated time after the circuit opened. Printed per chain length: pairs,
pairs per simulated second, mean true fidelity and mean estimate, CPU seconds of the run and
pairs per CPU-second; with ``--sequence`` the SeQUeNCe harness runs the same chain in its own
venv (Python 3.12, built on first use) and the ratio of pairs per CPU-second is printed.

    python tests/bench/bench_chain_sim.py --nodes 5 --sim-s 0.1 --seeds 3 --sequence
    python tests/bench/bench_chain_sim.py --nodes 5 --seeds 3 --sequence --proto sh bk
    python tests/bench/bench_chain_sim.py --nodes 2 5 9 --seeds 1 --sequence
    python tests/bench/bench_chain_sim.py --nodes 2 3 5 9 17 --sim-s 0.1
    python tests/bench/bench_chain_sim.py --nodes 17 --target 0.25 --sequence
    python tests/bench/bench_chain_sim.py --nodes 2 5 9 --multiplexing 1   # one pair per link
    python tests/bench/bench_chain_sim.py --nodes 2 5 9 --detector-efficiency 0.84
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from qnet.network.circuit_events import EndToEndPair
from qnet.sim import SimNetwork, open_network, run
from qnet.topology import Topology, parse_topology

# Run as a script from anywhere: the repository root makes ``tests.bench`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def chain_topology(
    nodes: int,
    km: float,
    seed: int,
    *,
    scheme: str = "double_click",
    multiplexing: int = 4,
    detector_efficiency: float = 0.9,
) -> Topology:
    names = [f"r{i}" for i in range(nodes)]
    text = f"""
[network]
name = "bench_chain{nodes}"
seed = {seed}

[defaults.node]
memory_qubits = 8
memory_depolar_rate_hz = {4 / 3}

[defaults.link]
scheme = "{scheme}"
length_km = {km}
attenuation_db_per_km = 0.2
detector_efficiency = {detector_efficiency}
source_fidelity = 0.95
attempt_overhead_ns = 100000
multiplexing = {multiplexing}
"""
    for i, name in enumerate(names):
        memory = 4 if i in (0, nodes - 1) else 8
        text += f'\n[[node]]\nname = "{name}"\nmemory_qubits = {memory}\n'
    for a, b in itertools.pairwise(names):
        text += f'\n[[link]]\nbetween = ["{a}", "{b}"]\n'
    return parse_topology(text)


@dataclass
class ChainRun:
    nodes: int
    pairs: int
    sim_s: float
    cpu_s: float
    true_fidelity: float
    estimate: float

    @property
    def per_cpu_s(self) -> float:
        return self.pairs / self.cpu_s if self.cpu_s > 0 else 0.0


async def _measure(
    net: SimNetwork, head: str, tail: str, sim_s: float, target: float
) -> tuple[int, list[float], list[float]]:
    handle = net.node(head).open_circuit(tail, min_fidelity=target, number=0)
    await handle.wait_open()
    far = await net.node(tail).circuits.incoming.receive()
    halves: dict[int, EndToEndPair] = {}
    true: list[float] = []
    estimates: list[float] = []

    async def drain(end: object, node: str) -> None:
        async for pair in end:  # type: ignore[attr-defined]
            # As an application does (qnet.api): a half it holds counts against the node's
            # memory, so the link layer does not arm into it, meet NoMemory and back off;
            # released, its room is armed again at once.
            net.node(node).hold_qubits([pair.qubit])
            other = halves.pop(pair.index, None)
            if other is None:
                halves[pair.index] = pair
                continue
            h, t = (pair, other) if node == head else (other, pair)
            true.append(net.core.oracle_pair_fidelity(h.qubit, t.qubit, 0, net.now()))
            estimates.append(h.fidelity_estimate)
            await net.sessions[head].free([h.qubit])
            await net.sessions[tail].free([t.qubit])
            net.node(head).release_qubits([h.qubit])
            net.node(tail).release_qubits([t.qubit])

    with trio.move_on_after(sim_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, handle, head)
            nursery.start_soon(drain, far, tail)
    return len(true), true, estimates


def run_qnet(
    nodes: int,
    km: float,
    sim_s: float,
    seed: int,
    target: float = 0.5,
    *,
    multiplexing: int = 4,
    detector_efficiency: float = 0.9,
) -> ChainRun:
    topology = chain_topology(
        nodes, km, seed, multiplexing=multiplexing, detector_efficiency=detector_efficiency
    )
    result: dict[str, object] = {}

    async def main() -> None:
        async with open_network(topology, seed=seed) as net:
            start = time.process_time()
            pairs, true, est = await _measure(net, "r0", f"r{nodes - 1}", sim_s, target)
            result["cpu"] = time.process_time() - start
            result["pairs"] = pairs
            result["true"] = statistics.fmean(true) if true else float("nan")
            result["est"] = statistics.fmean(est) if est else float("nan")

    run(main)
    return ChainRun(
        nodes,
        int(result["pairs"]),  # type: ignore[call-overload]
        sim_s,
        float(result["cpu"]),  # type: ignore[arg-type]
        float(result["true"]),  # type: ignore[arg-type]
        float(result["est"]),  # type: ignore[arg-type]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5])
    parser.add_argument("--km", type=float, default=20.0)
    parser.add_argument("--sim-s", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sequence", action="store_true", help="also run SeQUeNCe")
    parser.add_argument(
        "--proto",
        nargs="+",
        choices=["sh", "bk"],
        default=["sh"],
        help="SeQUeNCe's generation protocol(s): sh (single-heralded, Bell-diagonal states: the"
        " physics to compare with) or bk (Barrett-Kok, qnet's scheme here, but its states stay"
        " perfect and only a label carries the fidelity, so its F is not comparable)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=0.5,
        help="end-to-end fidelity target, both sides (16 links reach 0.5 barely: use 0.25)",
    )
    parser.add_argument(
        "--multiplexing",
        type=int,
        default=4,
        help="memory pairs each link attempts with at once (SeQUeNCe's harness: 4)",
    )
    parser.add_argument(
        "--detector-efficiency",
        type=float,
        default=0.9,
        help="0.84 gives SeQUeNCe's measured p = 0.1407 (its detectors' dead time included)",
    )
    args = parser.parse_args()
    print(
        f"{'impl':<9}{'nodes':>6}{'pairs':>8}{'pairs/sim-s':>13}{'F true':>9}{'F est':>8}"
        f"{'CPU s':>8}{'pairs/CPU-s':>13}"
    )
    for nodes in args.nodes:
        runs = [
            run_qnet(
                nodes,
                args.km,
                args.sim_s,
                seed,
                args.target,
                multiplexing=args.multiplexing,
                detector_efficiency=args.detector_efficiency,
            )
            for seed in range(args.seeds)
        ]
        pairs = statistics.median(r.pairs for r in runs)
        cpu = statistics.median(r.cpu_s for r in runs)
        per_cpu = statistics.median(r.per_cpu_s for r in runs)
        true = statistics.median(r.true_fidelity for r in runs)
        est = statistics.median(r.estimate for r in runs)
        print(
            f"{'qnet':<9}{nodes:>6}{pairs:>8.0f}{pairs / args.sim_s:>13.0f}{true:>9.4f}"
            f"{est:>8.4f}{cpu:>8.3f}{per_cpu:>13.0f}"
        )
        if args.sequence:
            from tests.bench.sequence_side import default_venv, run_sequence

            for proto in args.proto:
                seq = [
                    run_sequence(
                        nodes,
                        args.km,
                        proto,
                        args.sim_s,
                        seed,
                        venv=default_venv(),
                        target_fid=args.target,
                    )
                    for seed in range(args.seeds)
                ]
                s_pairs = statistics.median(float(r["pairs"]) for r in seq)
                # The simulation loop only (its import and set-up are not counted, as for
                # qnet).
                s_cpu = statistics.median(float(r["run_cpu_s"]) for r in seq)
                s_per = statistics.median(float(r["pairs_per_cpu_s"]) for r in seq)
                # A run without pairs has no fidelity (None): the median is over runs with one.
                fids = [float(f) for r in seq if (f := r.get("mean_fid_physical")) is not None]
                s_f = statistics.median(fids) if fids else float("nan")
                label = f"SeQ {proto}"
                print(
                    f"{label:<9}{nodes:>6}{s_pairs:>8.0f}{s_pairs / args.sim_s:>13.0f}"
                    f"{s_f:>9.4f}{'':>8}{s_cpu:>8.3f}{s_per:>13.0f}"
                )
                ratio = per_cpu / s_per if s_per > 0 else float("nan")
                print(f"{'ratio':<9}{nodes:>6}{'':>54}{ratio:>12.1f}×  (qnet / {label})")


if __name__ == "__main__":
    main()
