"""Link-layer pairs in qnet.sim: ask for MEASURE pairs between alice and bob and check them.

    python examples/link_pairs_sim.py [examples/two_nodes.toml] [pairs]

Runs the network's own node code in one process on virtual time, asks the link layer (EGP)
for pairs measured in Z at both ends with a fidelity of at least 0.9, and prints how often the
outcomes agree with the heralded Bell state, next to the fidelity the link layer estimated.
"""

from __future__ import annotations

import sys
import time

import qnet.sim
from qnet.link.events import BasisChoice, CreateRequest, Kind, PairOk
from qnet.topology import load_topology


async def main(path: str, pairs: int) -> None:
    topology = load_topology(path)
    async with qnet.sim.open_network(topology) as net:
        alice, bob = net.node("alice"), net.node("bob")
        at_alice, at_bob = alice.subscribe("bob"), bob.subscribe("alice")
        request = CreateRequest(
            "bob", number=pairs, min_fidelity=0.9, kind=Kind.MEASURE, basis=BasisChoice.Z
        )
        alice.create("bob", request)
        agree = fidelity = 0.0
        for _ in range(pairs):
            a, b = await at_alice.receive(), await at_bob.receive()
            if not isinstance(a, PairOk) or not isinstance(b, PairOk):
                raise SystemExit(f"the link layer refused: {a} / {b}")
            assert a.pair_id == b.pair_id, "both ends deliver the same pair"
            # Ψ± (the heralded states) give opposite Z outcomes.
            agree += (a.outcome != b.outcome) == (a.bell_index in (1, 3))
            fidelity += a.fidelity_estimate
        seconds = net.now() * 1e-9
    print(f"{pairs} pairs in {seconds * 1e3:.2f} ms of simulated time")
    print(f"Z outcomes as the Bell state predicts: {agree / pairs:.3f}")
    print(f"mean fidelity estimate:                {fidelity / pairs:.3f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    start = time.process_time()
    qnet.sim.run(
        lambda: main(
            args[0] if args else "examples/two_nodes.toml", int(args[1]) if len(args) > 1 else 200
        )
    )
    print(f"CPU time: {time.process_time() - start:.2f} s")
