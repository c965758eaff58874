"""A CNOT between a control qubit on one node and a target on another, from one EPR pair
(``qnet.apps.nonlocal_gates``), checked two ways:

- truth table: each input |c t⟩ of {00, 01, 10, 11}, ``rounds`` times; both measured in Z
  afterwards, the output should be |c, t⊕c⟩;
- entangling power: control |+⟩, target |0⟩ make |Φ+⟩ across the nodes; measuring ZZ, XX
  and YY in turn gives its fidelity F = (1 + ⟨XX⟩ − ⟨YY⟩ + ⟨ZZ⟩)/4 (> ½ proves entanglement).

The target's node reports its outcomes to the control's node over the connection at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from qnet.api.aio import AsyncNode
from qnet.apps.nonlocal_gates import control_side, target_side
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
from qnet.apps.stats import Estimate, expectation, proportion
from qnet.errors import InvalidArgument

PORT = 7005
INPUTS = ((0, 0), (0, 1), (1, 0), (1, 1))
BELL_BASES = ("Z", "X", "Y")
#: Sign of each correlator in the Φ+ fidelity.
BELL_SIGNS = {"Z": 1, "X": 1, "Y": -1}


def expected_truth_table(pair_fidelity: float) -> float:
    return (1 + 2 * pair_fidelity) / 3


@dataclass(frozen=True)
class CnotResult:
    control: str
    target: str
    #: Output counts per input: counts[(c, t)][(c', t')].
    counts: dict[tuple[int, int], dict[tuple[int, int], int]]
    #: Probability of the right output, per input and over all.
    success: dict[tuple[int, int], Estimate]
    truth_table: Estimate
    bell_fidelity: Estimate
    bell_correlators: dict[str, Estimate]
    pair_fidelity: float
    elapsed_s: float
    wall_s: float

    def summary(self) -> str:
        lines = [
            f"distributed CNOT {self.control} (control) → {self.target} (target), one EPR pair"
            f" per gate: truth table right in {self.truth_table.format()} of runs"
            f" (model (1+2F)/3 = {expected_truth_table(self.pair_fidelity):.3f}),"
            f" Bell-state fidelity {self.bell_fidelity.format()} (model F ="
            f" {self.pair_fidelity:.3f}; > 0.5 means entangled)",
        ]
        for inp in INPUTS:
            row = self.counts[inp]
            cells = " ".join(f"{o[0]}{o[1]}:{row.get(o, 0):3d}" for o in INPUTS)
            lines.append(f"  |{inp[0]}{inp[1]}⟩ → {cells}   right {self.success[inp].format()}")
        corr = ", ".join(f"⟨{b}{b}⟩ = {e.value:+.3f}" for b, e in self.bell_correlators.items())
        lines.append(f"  Bell output: {corr}")
        lines.append(timing(self.elapsed_s, self.wall_s))
        return "\n".join(lines)


async def distributed_cnot(
    control: AsyncNode,
    target: AsyncNode,
    *,
    rounds: int = 50,
    bell_rounds: int = 150,
    min_fidelity: float = 0.9,
    port: int = PORT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> CnotResult:
    """``rounds`` runs per truth-table input and ``bell_rounds`` Bell-state runs."""
    check_positive_int("rounds", rounds)
    if check_positive_int("bell_rounds", bell_rounds) < len(BELL_BASES):
        raise InvalidArgument(f"bell_rounds must be at least {len(BELL_BASES)} (one per basis)")
    check_fidelity("min_fidelity", min_fidelity)
    # (control input, target input, measurement basis): the experiment both ends follow.
    plan = [(c, t, "Z") for c, t in INPUTS for _ in range(rounds)]
    plan += [(-1, 0, BELL_BASES[i % 3]) for i in range(bell_rounds)]
    clock = Stopwatch.started()
    async with connection(
        control, target, port, min_fidelity=min_fidelity, timeout_s=timeout_s
    ) as (c_sock, t_sock):

        async def control_role() -> tuple[list[int], list[int], list[float]]:
            outcomes, fidelities = [], []
            for c, _, basis in plan:
                q = await control.qubit()
                if c == 1:
                    await q.x()
                elif c == -1:
                    await q.h()
                fidelities.append(await control_side(c_sock, q))
                outcomes.append(await q.measure(basis))
            theirs = await recv_json(c_sock, "cnot-outcomes")
            return outcomes, [int(m) for m in theirs["outcomes"]], fidelities

        async def target_role() -> None:
            outcomes = []
            for _, t, basis in plan:
                q = await target.qubit()
                if t:
                    await q.x()
                await target_side(t_sock, q, gate="cnot")
                outcomes.append(await q.measure(basis))
            await send_json(t_sock, "cnot-outcomes", outcomes=outcomes)

        (c_out, t_out, fids), _ = await run_both(control_role, target_role)
    counts: dict[tuple[int, int], dict[tuple[int, int], int]] = {i: {} for i in INPUTS}
    parities: dict[str, list[int]] = {b: [] for b in BELL_BASES}
    for (c, t, basis), mc, mt in zip(plan, c_out, t_out, strict=True):
        if c < 0:
            parities[basis].append(mc ^ mt)
        else:
            row = counts[(c, t)]
            row[(mc, mt)] = row.get((mc, mt), 0) + 1
    success = {(c, t): proportion(counts[(c, t)].get((c, t ^ c), 0), rounds) for c, t in INPUTS}
    right = sum(counts[(c, t)].get((c, t ^ c), 0) for c, t in INPUTS)
    correlators = {b: expectation(v) for b, v in parities.items()}
    bell = Estimate(0.25, 0.0)
    for b, e in correlators.items():
        bell = bell + e.scaled(BELL_SIGNS[b] / 4)
    return CnotResult(
        control.name,
        target.name,
        counts,
        success,
        proportion(right, 4 * rounds),
        bell,
        correlators,
        sum(fids) / len(fids),
        clock.elapsed_s,
        clock.wall_s,
    )
