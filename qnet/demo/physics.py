"""Physics demo: heralded pairs over one link through a real qnet-channeld process.

Starts the backend as a child process, registers two nodes, declares a fibre link, keeps
memory qubits armed at both ends, measures each heralded pair in Z, X or Y (chosen by its
sequence number, so both ends agree without talking), and prints the measured success
probability, rate and fidelity next to what the physics model predicts. The fidelity is
estimated from the outcomes only: F = (1 + s_x⟨XX⟩ + s_y⟨YY⟩ + s_z⟨ZZ⟩)/4, the signs s being
those of the heralded Bell state.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import trio

from qnet.channel.client import LinkTheory, NodeSession, open_channel_client
from qnet.physical.gates import Basis
from qnet.physical.params import LinkParams, NodeParams, Scheme
from qnet.runtime.processes import ChildDaemon, start_channeld

BASES = (Basis.Z, Basis.X, Basis.Y)


def correlation_signs(bell_index: int) -> dict[Basis, int]:
    """⟨σσ⟩ of Bell state x + 2z = (I ⊗ X^x Z^z)|Φ+⟩: X on one half flips ZZ and YY, Z flips
    XX and YY, starting from Φ+'s (XX, YY, ZZ) = (+1, −1, +1)."""
    x, z = bell_index & 1, bell_index >> 1
    return {Basis.X: (-1) ** z, Basis.Y: -((-1) ** (x + z)), Basis.Z: (-1) ** x}


@dataclass
class _Side:
    outcomes: dict[int, int] = field(default_factory=dict)
    heralds: list[tuple[int, int, int]] = field(default_factory=list)  # seq, time, attempts
    bell: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoResult:
    pairs: int
    theory: LinkTheory
    success_probability: float
    success_probability_err: float
    rate_hz: float
    rate_hz_err: float
    fidelity: float
    fidelity_err: float
    correlations: dict[Basis, float]


async def _run_side(session: NodeSession, peer: str, buffer: int, pairs: int, side: _Side) -> None:
    qubits = await session.allocate(buffer)
    async with session.heralds() as heralds:
        await session.start_generation(peer, qubits)
        async for herald in heralds:
            basis = BASES[herald.sequence % 3]
            side.outcomes[herald.sequence] = await session.measure(herald.qubit, basis, keep=True)
            side.heralds.append((herald.sequence, herald.time_ns, herald.attempts))
            side.bell[herald.sequence] = herald.bell_index
            if len(side.heralds) >= pairs:
                break
            await session.start_generation(peer, [herald.qubit])
    await session.stop_generation(peer)
    await session.free(qubits)


def _analyse(alice: _Side, bob: _Side, theory: LinkTheory, cycle_ns: int) -> DemoResult:
    seqs = sorted(set(alice.outcomes) & set(bob.outcomes))
    products: dict[Basis, list[int]] = {b: [] for b in BASES}
    for s in seqs:
        basis = BASES[s % 3]
        sign = correlation_signs(alice.bell[s])[basis]
        same = alice.outcomes[s] == bob.outcomes[s]
        products[basis].append(sign * (1 if same else -1))
    means = {b: statistics.fmean(v) for b, v in products.items() if v}
    fidelity = (1 + sum(means.values())) / 4
    variance = sum((1 - m * m) / len(products[b]) for b, m in means.items())
    attempts = [a for _, _, a in alice.heralds]
    mean_attempts = statistics.fmean(attempts)
    p = 1 / mean_attempts
    p_err = p * (statistics.stdev(attempts) / math.sqrt(len(attempts))) / mean_attempts
    # Time to success = attempts × cycle, so the rate while armed is 1 / (mean attempts · cycle).
    rate = p / (cycle_ns * 1e-9)
    return DemoResult(
        pairs=len(seqs),
        theory=theory,
        success_probability=p,
        success_probability_err=p_err,
        rate_hz=rate,
        rate_hz_err=rate * p_err / p,
        fidelity=fidelity,
        fidelity_err=math.sqrt(variance) / 4,
        correlations=means,
    )


async def run_demo(
    *,
    length_km: float = 10.0,
    scheme: Scheme = Scheme.SINGLE_CLICK,
    bright_state: float = 0.1,
    pairs: int = 1500,
    time_scale: float = 0.05,
    seed: int = 1,
    channeld: ChildDaemon | None = None,
) -> DemoResult:
    """Run the demo against ``channeld`` (or a fresh child process) and return the figures."""
    async with trio.open_nursery() as nursery:
        daemon = channeld or await nursery.start(
            start_channeld, ["--time-scale", str(time_scale), "--seed", str(seed)]
        )
        params = LinkParams(length_km=length_km, scheme=scheme, bright_state=bright_state)
        async with open_channel_client(daemon.address) as client:
            alice = await client.register("alice", NodeParams(memory_qubits=32))
            bob = await client.register("bob", NodeParams(memory_qubits=32))
            theory = await alice.declare_link("bob", params)
            await bob.declare_link("alice", params)
            sides = _Side(), _Side()
            async with trio.open_nursery() as inner:
                inner.start_soon(_run_side, alice, "bob", 16, pairs, sides[0])
                inner.start_soon(_run_side, bob, "alice", 16, pairs, sides[1])
        nursery.cancel_scope.cancel()
    return _analyse(sides[0], sides[1], theory, theory.cycle_ns)


def format_result(r: DemoResult, *, length_km: float, scheme: Scheme) -> str:
    t = r.theory
    lines = [
        f"link: {length_km:g} km, {scheme.value}, η = {t.transmissivity:.4f} per arm",
        f"pairs measured: {r.pairs} (each in Z, X or Y by its sequence number)",
        f"{'':28}{'measured':>22}{'theory':>12}",
        f"{'success probability':28}{_pm(r.success_probability, r.success_probability_err)}"
        f"{t.success_probability:12.4f}",
        f"{'rate while armed (pairs/s)':28}{_pm(r.rate_hz, r.rate_hz_err, 1)}{t.rate_hz:12.1f}",
        f"{'fidelity':28}{_pm(r.fidelity, r.fidelity_err)}{t.fidelity:12.4f}",
        "correlations (sign-adjusted): "
        + ", ".join(f"{b.value}{b.value} {v:+.3f}" for b, v in r.correlations.items()),
    ]
    return "\n".join(lines)


def _pm(value: float, err: float, digits: int = 4) -> str:
    return f"{value:.{digits}f} ± {err:.{digits}f}".rjust(22)
