"""``qnet demo``: a real network of processes, and applications run across it.

Brings up ``examples/chain4.toml`` (alice – r1 – r2 – bob) as local processes with ``qnet up``
(a channel backend and four node daemons, in a run directory of its own so that a network the
user already runs is not touched), connects to alice's and bob's daemons through the public
API as an application would (``qnet.open_node``), teleports states from alice to bob and checks
them by tomography, runs BBM92 quantum key distribution and sends a file encrypted with the key,
prints what each measured, and brings the network down, whatever happened.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qnet.api.aio import open_node
from qnet.apps.bloch import parse_state
from qnet.apps.qkd import QkdOptions, QkdResult, qkd
from qnet.apps.teleport import TeleportResult, teleport
from qnet.daemon.launcher import down, up
from qnet.errors import FailedPrecondition

#: The demo's network, in the checkout next to the package (``pip install -e .``).
DEFAULT_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "chain4.toml"
DEMO_STATES = ("0", "1", "+", "+i")


@dataclass(frozen=True)
class NetworkDemoResult:
    up_s: float
    nodes: tuple[str, ...]
    teleport: TeleportResult
    qkd: QkdResult
    down_s: float

    @property
    def ok(self) -> bool:
        return self.teleport.beats_classical and self.qkd.keys_agree


def demo_topology(path: Path | None = None) -> Path:
    """The topology file to run, absolute (the daemons read it too)."""
    topology = (path or DEFAULT_TOPOLOGY).resolve()
    if not topology.is_file():
        raise FailedPrecondition(
            f"no topology at {topology}: run from a qnet checkout or pass --topology"
        )
    return topology


async def run_network_demo(
    topology: Path,
    *,
    rounds: int = 24,
    qkd_pairs: int = 3000,
    min_fidelity: float = 0.9,
    seed: int | None = None,
    say: Callable[[str], None] = print,
) -> NetworkDemoResult:
    """Run the demo on ``topology`` (absolute: see ``demo_topology``)."""
    with tempfile.TemporaryDirectory(prefix="qnet-demo-") as tmp:
        run_dir = Path(tmp)
        say(f"qnet up {topology.name}: starting qnet-channeld and a qnetd per node…")
        started = await up(topology, run_dir)
        try:
            nodes = tuple(started.state.nodes)
            say(
                f"  network {started.state.network!r} up in {started.elapsed_s:.2f} s:"
                f" {' – '.join(nodes)}, routing converged"
            )
            async with (
                open_node("alice", run_dir=str(run_dir)) as alice,
                open_node("bob", run_dir=str(run_dir)) as bob,
            ):
                say(
                    f"teleporting {len(DEMO_STATES)} states × {rounds} from alice to bob"
                    " (3 hops, entanglement swapping at r1 and r2)…"
                )
                tele = await teleport(
                    alice,
                    bob,
                    states=[parse_state(s) for s in DEMO_STATES],
                    rounds=rounds,
                    seed=seed,
                    min_fidelity=min_fidelity,
                )
                say(tele.summary())
                say(f"BBM92 key distribution over {qkd_pairs} pairs, then an encrypted file…")
                key = await qkd(
                    alice,
                    bob,
                    options=QkdOptions(protocol="bbm92", pairs=qkd_pairs),
                    seed=seed,
                    min_fidelity=min_fidelity,
                )
                say(key.summary())
        finally:
            stopping = time.monotonic()
            await down(run_dir)
    down_s = time.monotonic() - stopping
    say(f"qnet down: {len(nodes) + 1} daemons stopped in {down_s:.2f} s.")
    return NetworkDemoResult(started.elapsed_s, nodes, tele, key, down_s)
