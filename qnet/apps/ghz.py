"""A GHZ state (|0…0⟩ + |1…1⟩)/√2 across a centre node and two or more leaves, verified by
a fidelity witness over many rounds.

Building it (fusion of Bell pairs): the centre holds one half of a |Φ+⟩ with every leaf
(c₀…c_k with leaves l₀…l_k). It applies CNOT(c₀ → cᵢ) for i ≥ 1 and measures cᵢ in Z
(outcome mᵢ); leaf i applies X^mᵢ on receipt of mᵢ over its socket. Then c₀, l₀, …, l_k hold
an (k + 2)-qubit GHZ state: Σₐ|a, a⟩|a ⊕ mᵢ⟩ corrected to Σₐ|a…a⟩.

Verifying it (Gühne & Tóth 2009; the parity measurements of ion-trap GHZ experiments): for N
qubits, F = ⟨GHZ|ρ|GHZ⟩ = (P + C)/2 where P = P(0…0) + P(1…1) comes from all-Z rounds and
the coherence C = (1/N) Σₖ (−1)ᵏ ⟨Mₖ⟩ from the N settings Mₖ = ⊗(cos θₖ X + sin θₖ Y),
θₖ = kπ/N (each qubit turned by RZ(−θₖ) and measured in X; ⟨Mₖ⟩ is the parity of the N
outcomes). The witness W = ½ − |GHZ⟩⟨GHZ| has ⟨W⟩ = ½ − F: negative only for genuinely
N-partite entangled states, so W + 2σ < 0 proves it.

Model for Werner pairs of fidelities Fᵢ: each pair is |Φ+⟩ with a Pauli X, Y or Z (each
(1 − Fᵢ)/3); X or Y leaves a bit flip, Z or Y a phase flip; the state stays GHZ only with no
bit flip and an even number of phase flips: F = [Π(Fᵢ + zᵢ) + Π(Fᵢ − zᵢ)]/2, zᵢ = (1 − Fᵢ)/3.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

from qnet.api.aio import AsyncNode, AsyncQubit, AsyncSocket
from qnet.apps.session import (
    DEFAULT_TIMEOUT_S,
    Stopwatch,
    check_fidelity,
    check_positive_int,
    connection,
    recv_json,
    run_all,
    send_json,
    timing,
)
from qnet.apps.stats import Estimate, expectation, proportion
from qnet.errors import InvalidArgument

PORT = 7004
Z_SETTING = -1


def expected_fidelity(pair_fidelities: Sequence[float]) -> float:
    plus, minus = 1.0, 1.0
    for f in pair_fidelities:
        z = (1 - f) / 3
        plus *= f + z
        minus *= f - z
    return (plus + minus) / 2


@dataclass(frozen=True)
class GhzResult:
    centre: str
    leaves: tuple[str, ...]
    rounds: int
    #: P(0…0) + P(1…1) from the all-Z rounds.
    populations: Estimate
    #: ⟨Mₖ⟩ for k = 0…N−1.
    parities: tuple[Estimate, ...]
    coherence: Estimate
    fidelity: Estimate
    pair_fidelity: float
    elapsed_s: float
    wall_s: float

    @property
    def qubits(self) -> int:
        return len(self.leaves) + 1

    @property
    def witness(self) -> Estimate:
        return self.fidelity.scaled(-1, 0.5)

    @property
    def genuinely_entangled(self) -> bool:
        return self.witness.interval()[1] < 0

    @property
    def expected(self) -> float:
        return expected_fidelity([self.pair_fidelity] * len(self.leaves))

    def summary(self) -> str:
        lo, hi = self.witness.interval()
        verdict = (
            "genuine multipartite entanglement"
            if self.genuinely_entangled
            else "NOT proven genuinely multipartite entangled"
        )
        par = ", ".join(f"{e.value:+.3f}" for e in self.parities)
        return "\n".join(
            [
                f"{self.qubits}-qubit GHZ over {self.centre} + {', '.join(self.leaves)},"
                f" {self.rounds} rounds: fidelity {self.fidelity.format()}, witness"
                f" ½ − F = {self.witness.format()} (95% CI {lo:.3f}–{hi:.3f}): {verdict}",
                f"  populations P(0…0)+P(1…1) = {self.populations.format()}; parities ⟨Mₖ⟩ ="
                f" {par}; coherence {self.coherence.format()}",
                f"  model {self.expected:.3f} from the stack's pair fidelity"
                f" F = {self.pair_fidelity:.3f}",
                timing(self.elapsed_s, self.wall_s),
            ]
        )


async def _measure(q: AsyncQubit, setting: int, n: int) -> int:
    if setting == Z_SETTING:
        return await q.measure("Z")
    if setting:
        await q.rz(-setting * math.pi / n)
    return await q.measure("X")


async def ghz(
    centre: AsyncNode,
    leaves: Sequence[AsyncNode],
    *,
    rounds: int = 400,
    min_fidelity: float = 0.9,
    port: int = PORT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> GhzResult:
    """Build a GHZ state over ``centre`` and ``leaves`` ``rounds`` times and measure it; the
    settings cycle through all-Z and the N parity settings."""
    check_positive_int("rounds", rounds)
    check_fidelity("min_fidelity", min_fidelity)
    if len(leaves) < 2:
        raise InvalidArgument("a GHZ state across nodes needs a centre and at least 2 leaves")
    names = [centre.name, *(leaf.name for leaf in leaves)]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"the GHZ nodes must all differ, got {names}")
    n = len(leaves) + 1
    settings = [Z_SETTING, *range(n)]
    plan = [settings[r % len(settings)] for r in range(rounds)]
    if rounds < len(settings):
        raise InvalidArgument(f"{n} qubits need at least {len(settings)} rounds (one per setting)")
    clock = Stopwatch.started()
    async with AsyncExitStack() as stack:
        links = [
            await stack.enter_async_context(
                connection(centre, leaf, port, min_fidelity=min_fidelity, timeout_s=timeout_s)
            )
            for leaf in leaves
        ]
        centre_socks = [c for c, _ in links]

        async def centre_role() -> tuple[list[int], list[list[int]], list[float]]:
            outcomes: list[int] = []
            fids: list[float] = []
            for setting in plan:
                halves = [await s.epr() for s in centre_socks]
                fids.extend(h.fidelity for h in halves)
                flips = [0]
                for h in halves[1:]:
                    await halves[0].cnot(h)
                    flips.append(await h.measure("Z"))
                for s, flip in zip(centre_socks, flips, strict=True):
                    await send_json(s, "ghz", flip=flip, setting=setting)
                outcomes.append(await _measure(halves[0], setting, n))
            reports = [await recv_json(s, "ghz-outcomes") for s in centre_socks]
            return outcomes, [[int(m) for m in r["outcomes"]] for r in reports], fids

        async def leaf_role(sock: AsyncSocket) -> None:
            outcomes = []
            for _ in plan:
                q = await sock.epr()
                order = await recv_json(sock, "ghz")
                if order["flip"]:
                    await q.x()
                outcomes.append(await _measure(q, int(order["setting"]), n))
            await send_json(sock, "ghz-outcomes", outcomes=outcomes)

        def leaf_task(sock: AsyncSocket) -> Callable[[], Awaitable[None]]:
            return lambda: leaf_role(sock)

        results = await run_all([centre_role, *(leaf_task(s) for _, s in links)])
    mine, theirs, fids = results[0]
    return _analyse(centre, leaves, plan, n, mine, theirs, fids, clock)


def _analyse(
    centre: AsyncNode,
    leaves: Sequence[AsyncNode],
    plan: list[int],
    n: int,
    mine: list[int],
    theirs: list[list[int]],
    fids: list[float],
    clock: Stopwatch,
) -> GhzResult:
    aligned = 0
    z_rounds = 0
    parity_bits: dict[int, list[int]] = {k: [] for k in range(n)}
    for r, setting in enumerate(plan):
        bits = [mine[r], *(t[r] for t in theirs)]
        if setting == Z_SETTING:
            z_rounds += 1
            aligned += len(set(bits)) == 1
        else:
            parity_bits[setting].append(sum(bits) & 1)
    populations = proportion(aligned, z_rounds)
    parities = tuple(expectation(parity_bits[k]) for k in range(n))
    coherence = Estimate(0.0, 0.0)
    for k, e in enumerate(parities):
        coherence = coherence + e.scaled((-1) ** k / n)
    fidelity = (populations + coherence).scaled(0.5)
    return GhzResult(
        centre.name,
        tuple(leaf.name for leaf in leaves),
        len(plan),
        populations,
        parities,
        coherence,
        fidelity,
        sum(fids) / len(fids),
        clock.elapsed_s,
        clock.wall_s,
    )
