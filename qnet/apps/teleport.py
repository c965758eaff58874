"""Teleportation, checked by tomography: the sender prepares states and ``send_qubit``s them;
the receiver measures each arrival in X, Y or Z and reports its outcomes back over the
connection; the sender reconstructs what arrived and its fidelity with what was sent.

Given states are measured in turn in X, Y and Z (``rounds`` shots per state) and each is
reconstructed as a Bloch vector; random (Haar) states get one shot each in a random basis and
the single-shot estimator of ``qnet.apps.bloch`` gives their average fidelity.

Model: teleporting through a Werner pair of fidelity F is a depolarising channel with
fidelity (2F + 1)/3 for every input state (Bennett et al. 1996; Horodecki 1999), above the
2/3 any classical measure-and-prepare scheme can reach.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qnet.api.aio import AsyncNode, AsyncSocket
from qnet.apps.bloch import (
    BASES,
    BlochState,
    Tomography,
    average_fidelity,
    random_state,
    single_shot_fidelity,
)
from qnet.apps.session import (
    DEFAULT_TIMEOUT_S,
    Stopwatch,
    check_fidelity,
    check_positive_int,
    connection,
    probe_pair_fidelity,
    recv_json,
    run_both,
    send_json,
    timing,
)
from qnet.apps.stats import Estimate
from qnet.errors import InvalidArgument

PORT = 7001
#: Best fidelity of a classical (measure-and-prepare) teleportation of unknown states.
CLASSICAL_BOUND = 2 / 3


def expected_fidelity(pair_fidelity: float) -> float:
    """(2F + 1)/3: teleportation through a Werner pair of fidelity F."""
    return (2 * pair_fidelity + 1) / 3


@dataclass(frozen=True)
class StateResult:
    state: BlochState
    shots: int
    #: The reconstructed Bloch vector (X, Y, Z), or None for random states.
    bloch: tuple[Estimate, Estimate, Estimate] | None
    fidelity: Estimate


@dataclass(frozen=True)
class TeleportResult:
    sender: str
    receiver: str
    teleported: int
    per_state: tuple[StateResult, ...]
    #: Mean over the given states, or the average fidelity of random states.
    fidelity: Estimate
    #: The stack's estimate of the connection's pair fidelity, and the model from it.
    pair_fidelity: float
    expected: float
    elapsed_s: float
    wall_s: float

    @property
    def beats_classical(self) -> bool:
        return self.fidelity.interval()[0] > CLASSICAL_BOUND

    def summary(self) -> str:
        lo, hi = self.fidelity.interval()
        method = "single-shot Pauli estimator" if self.per_state[0].bloch is None else "tomography"
        lines = [
            f"teleported {self.teleported} states {self.sender} → {self.receiver},"
            f" fidelity {self.fidelity.format()} (95% CI {lo:.3f}–{hi:.3f}, {method})",
            f"  model (2F+1)/3 = {self.expected:.3f} from the stack's pair fidelity"
            f" F = {self.pair_fidelity:.3f}; classical bound 2/3:"
            f" {'beaten' if self.beats_classical else 'NOT beaten'}",
        ]
        for r in self.per_state:
            if r.bloch is not None:
                vec = ", ".join(f"{c.value:+.3f}" for c in r.bloch)
                lines.append(
                    f"  |{r.state.name}⟩: Bloch ({vec}) from {r.shots} shots,"
                    f" fidelity {r.fidelity.format()}"
                )
        lines.append(timing(self.elapsed_s, self.wall_s))
        return "\n".join(lines)


async def teleport(
    sender: AsyncNode,
    receiver: AsyncNode,
    *,
    states: list[BlochState] | None = None,
    rounds: int = 300,
    seed: int | None = None,
    min_fidelity: float = 0.9,
    port: int = PORT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> TeleportResult:
    """Teleport each of ``states`` ``rounds`` times (or, with ``states`` None, ``rounds``
    random states) from ``sender`` to ``receiver``, and measure what arrived."""
    check_positive_int("rounds", rounds)
    check_fidelity("min_fidelity", min_fidelity)
    if states is not None and not states:
        raise InvalidArgument("give at least one state, or None for random states")
    if states is not None and rounds < len(BASES):
        raise InvalidArgument(f"tomography needs at least {len(BASES)} rounds per state")
    rng = random.Random(seed)
    if states is None:
        plan = [random_state(rng) for _ in range(rounds)]
        bases = [rng.choice(BASES) for _ in plan]
    else:
        plan = [s for s in states for _ in range(rounds)]
        bases = [BASES[i % len(BASES)] for i in range(len(plan))]
    clock = Stopwatch.started()
    async with connection(
        sender, receiver, port, min_fidelity=min_fidelity, timeout_s=timeout_s
    ) as (out, into):
        pair_fidelity = await probe_pair_fidelity(out, into)

        async def send_role() -> list[int]:
            for state in plan:
                q = await sender.qubit()
                await state.prepare(q)
                await out.send_qubit(q)
            report = await recv_json(out, "outcomes")
            outcomes = [int(m) for m in report["outcomes"]]
            if len(outcomes) != len(plan):
                raise InvalidArgument(f"{len(outcomes)} outcomes for {len(plan)} states")
            return outcomes

        async def receive_role() -> None:
            await _measure_arrivals(into, bases)

        outcomes, _ = await run_both(send_role, receive_role)
    return _analyse(sender, receiver, plan, bases, outcomes, states, pair_fidelity, clock)


async def _measure_arrivals(into: AsyncSocket, bases: list[str]) -> None:
    outcomes = []
    for basis in bases:
        q = await into.recv_qubit()
        outcomes.append(await q.measure(basis))
    await send_json(into, "outcomes", outcomes=outcomes)


def _analyse(
    sender: AsyncNode,
    receiver: AsyncNode,
    plan: list[BlochState],
    bases: list[str],
    outcomes: list[int],
    states: list[BlochState] | None,
    pair_fidelity: float,
    clock: Stopwatch,
) -> TeleportResult:
    per_state: list[StateResult] = []
    if states is None:
        shots = [
            single_shot_fidelity(s, b, m) for s, b, m in zip(plan, bases, outcomes, strict=True)
        ]
        overall = average_fidelity(shots)
        per_state.append(StateResult(plan[0], len(plan), None, overall))
    else:
        tomographies = {id(s): Tomography(s) for s in states}
        for s, b, m in zip(plan, bases, outcomes, strict=True):
            tomographies[id(s)].add(b, m)
        for s in states:
            t = tomographies[id(s)]
            per_state.append(StateResult(s, t.shots, t.bloch_vector(), t.fidelity()))
        fids = [r.fidelity for r in per_state]
        if len(fids) == 1:
            overall = fids[0]
        else:
            total = fids[0]
            for f in fids[1:]:
                total = total + f
            overall = total.scaled(1 / len(fids))
    return TeleportResult(
        sender.name,
        receiver.name,
        len(plan),
        tuple(per_state),
        overall,
        pair_fidelity,
        expected_fidelity(pair_fidelity),
        clock.elapsed_s,
        clock.wall_s,
    )
