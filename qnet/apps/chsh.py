"""A CHSH Bell test between two nodes over their connection's pairs.

Each end takes its half of every pair, picks one of its two settings at random, measures
along that direction of the X–Z plane (RY(−θ) turns the direction θ onto Z, then a Z
measurement), and, at the end, Bob sends his settings and outcomes to Alice.

Settings: Alice 0 and π/2, Bob π/4 and −π/4. For |Φ+⟩, E(θa, θb) = cos(θa − θb), so
S = E₀₀ + E₀₁ + E₁₀ − E₁₁ reaches Tsirelson's 2√2; any local hidden-variable model has
|S| ≤ 2. A Werner pair of fidelity F gives S = 2√2·(4F − 1)/3.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from qnet.api.aio import AsyncNode, AsyncSocket
from qnet.apps.session import (
    DEFAULT_TIMEOUT_S,
    Stopwatch,
    check_fidelity,
    check_positive_int,
    connection,
    recv_json,
    run_both,
    send_json,
    timing,
)
from qnet.apps.stats import Estimate, expectation
from qnet.errors import InvalidArgument

PORT = 7002
ALICE_ANGLES = (0.0, math.pi / 2)
BOB_ANGLES = (math.pi / 4, -math.pi / 4)
#: Sign of each correlator (a, b) in S.
SIGNS = {(0, 0): 1, (0, 1): 1, (1, 0): 1, (1, 1): -1}
LOCAL_BOUND = 2.0
TSIRELSON = 2 * math.sqrt(2)


def expected_s(pair_fidelity: float) -> float:
    """S for Werner pairs of fidelity F with these settings."""
    return TSIRELSON * (4 * pair_fidelity - 1) / 3


@dataclass(frozen=True)
class ChshResult:
    alice: str
    bob: str
    pairs: int
    s: Estimate
    #: E(a, b) for each pair of settings.
    correlators: dict[tuple[int, int], Estimate]
    #: Mean of the stack's per-pair fidelity estimates, and the model S from it.
    pair_fidelity: float
    expected: float
    elapsed_s: float
    wall_s: float

    @property
    def violates(self) -> bool:
        """Whether the 95 % interval of S lies wholly above the local bound."""
        return self.s.interval()[0] > LOCAL_BOUND

    def summary(self) -> str:
        lo, hi = self.s.interval()
        corr = ", ".join(
            f"E{a}{b} = {e.value:+.3f}" for (a, b), e in sorted(self.correlators.items())
        )
        verdict = (
            f"violates the local bound 2 by {self.s.sigmas_from(LOCAL_BOUND):.1f} σ"
            if self.violates
            else "does NOT violate the local bound 2 at 95 %"
        )
        return "\n".join(
            [
                f"CHSH over {self.pairs} pairs {self.alice} – {self.bob}: S = {self.s.format()}"
                f" (95% CI {lo:.3f}–{hi:.3f}); {verdict}",
                f"  {corr}",
                f"  model 2√2(4F−1)/3 = {self.expected:.3f} from the stack's pair fidelity"
                f" F = {self.pair_fidelity:.3f}; Tsirelson bound {TSIRELSON:.3f}",
                timing(self.elapsed_s, self.wall_s),
            ]
        )


async def _measure_pairs(
    sock: AsyncSocket, settings: list[int], angles: tuple[float, float]
) -> tuple[list[int], list[float]]:
    outcomes: list[int] = []
    fidelities: list[float] = []
    for setting in settings:
        q = await sock.epr()
        fidelities.append(q.fidelity)
        if angles[setting]:
            await q.ry(-angles[setting])
        outcomes.append(await q.measure("Z"))
    return outcomes, fidelities


async def chsh(
    alice: AsyncNode,
    bob: AsyncNode,
    *,
    pairs: int = 1000,
    seed: int | None = None,
    min_fidelity: float = 0.9,
    port: int = PORT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ChshResult:
    check_positive_int("pairs", pairs)
    check_fidelity("min_fidelity", min_fidelity)
    if pairs < 8:
        raise InvalidArgument("a CHSH test needs at least 8 pairs (2 per setting pair)")
    rng = random.Random(seed)
    # Each end draws its own settings; neither knows the other's until the end.
    a_settings = [rng.randrange(2) for _ in range(pairs)]
    b_settings = [rng.randrange(2) for _ in range(pairs)]
    clock = Stopwatch.started()
    async with connection(alice, bob, port, min_fidelity=min_fidelity, timeout_s=timeout_s) as (
        a_sock,
        b_sock,
    ):

        async def alice_role() -> tuple[list[int], list[float], list[int], list[int]]:
            outcomes, fids = await _measure_pairs(a_sock, a_settings, ALICE_ANGLES)
            report = await recv_json(a_sock, "chsh-outcomes")
            return outcomes, fids, list(report["settings"]), list(report["outcomes"])

        async def bob_role() -> None:
            outcomes, _ = await _measure_pairs(b_sock, b_settings, BOB_ANGLES)
            await send_json(b_sock, "chsh-outcomes", settings=b_settings, outcomes=outcomes)

        (a_out, fids, b_set, b_out), _ = await run_both(alice_role, bob_role)
    if len(b_set) != pairs or len(b_out) != pairs:
        raise InvalidArgument(f"Bob reported {len(b_out)} outcomes for {pairs} pairs")
    parities: dict[tuple[int, int], list[int]] = {k: [] for k in SIGNS}
    for a, b, ma, mb in zip(a_settings, b_set, a_out, b_out, strict=True):
        parities[(a, int(b))].append(ma ^ int(mb))
    if any(not v for v in parities.values()):
        raise InvalidArgument("some setting pair got no pair: run more pairs")
    correlators = {k: expectation(v) for k, v in parities.items()}
    total = Estimate(0.0, 0.0)
    for k, e in correlators.items():
        total = total + e.scaled(SIGNS[k])
    pair_fidelity = sum(fids) / len(fids)
    return ChshResult(
        alice.name,
        bob.name,
        pairs,
        total,
        correlators,
        pair_fidelity,
        expected_s(pair_fidelity),
        clock.elapsed_s,
        clock.wall_s,
    )
