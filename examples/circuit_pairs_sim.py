"""End-to-end pairs over a circuit in qnet.sim: alice to bob across the repeaters of a chain.

    python examples/circuit_pairs_sim.py [examples/chain4.toml] [pairs] [min_fidelity]

Opens a circuit from alice to bob along alice's routing table, takes it at bob, and measures
each end-to-end pair at both ends (Z on even pairs, X on odd ones). Every pair arrives
corrected to Φ+, so the outcomes agree; how often they do shows the pairs' fidelity, printed
next to the fidelity the nodes predicted and the true one (the backend's oracle).
"""

from __future__ import annotations

import sys
import time

import trio

import qnet.sim
from qnet.network.circuit_events import EndToEndPair
from qnet.node.circuit_driver import CircuitHandle
from qnet.physical.gates import GateName
from qnet.topology import load_topology


async def main(path: str, pairs: int, min_fidelity: float) -> None:
    async with qnet.sim.open_network(load_topology(path)) as net:
        head = net.node("alice").open_circuit("bob", min_fidelity=min_fidelity, number=pairs)
        await head.wait_open()
        tail = await net.node("bob").circuits.incoming.receive()
        print(f"circuit {'-'.join(head.path)}, link targets {head.link_fidelity}")
        halves: dict[int, EndToEndPair] = {}
        agree = {"Z": [0, 0], "X": [0, 0]}
        predicted = true = 0.0

        async def measure(a: EndToEndPair, b: EndToEndPair) -> None:
            nonlocal predicted, true
            predicted += a.fidelity_estimate
            true += net.core.oracle_pair_fidelity(a.qubit, b.qubit, 0, net.now())
            basis = "Z" if a.index % 2 == 0 else "X"
            outcomes = []
            for node, qubit in (("alice", a.qubit), ("bob", b.qubit)):
                if basis == "X":
                    await net.sessions[node].gate(GateName.H, qubit)
                outcomes.append(await net.sessions[node].measure(qubit))
            agree[basis][0] += outcomes[0] == outcomes[1]
            agree[basis][1] += 1

        async def receive(end: CircuitHandle, node: str) -> None:
            async for pair in end:
                other = halves.pop(pair.index, None)
                if other is None:
                    halves[pair.index] = pair
                elif node == "alice":
                    await measure(pair, other)
                else:
                    await measure(other, pair)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, head, "alice")
            nursery.start_soon(receive, tail, "bob")
        seconds = net.now() * 1e-9
    n = agree["Z"][1] + agree["X"][1]
    print(f"{n} end-to-end pairs in {seconds * 1e3:.1f} ms of simulated time")
    for basis, (same, total) in agree.items():
        print(f"{basis} outcomes equal: {same / total:.3f} of {total}")
    print(f"mean predicted fidelity: {predicted / n:.4f}, true: {true / n:.4f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    start = time.process_time()
    qnet.sim.run(
        lambda: main(
            args[0] if args else "examples/chain4.toml",
            int(args[1]) if len(args) > 1 else 200,
            float(args[2]) if len(args) > 2 else 0.8,
        )
    )
    print(f"CPU time: {time.process_time() - start:.2f} s")
