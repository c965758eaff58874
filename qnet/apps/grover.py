"""Two-qubit Grover search with one qubit on each of two nodes, as in the distributed quantum
computing demonstration between two trapped-ion modules of Main et al. (Nature 2025).

Search space {00, 01, 10, 11}, one marked item w = (w₀ on node A, w₁ on node B). One Grover
iteration finds w with certainty on ideal hardware:

    H⊗H;  oracle: X^(1−w₀)⊗X^(1−w₁) · CZ · X^(1−w₀)⊗X^(1−w₁)   (phase −1 on |w⟩ only);
    diffusion: H⊗H · X⊗X · CZ · X⊗X · H⊗H;  measure both in Z.

Both CZs act across the nodes: each is a distributed CZ using one EPR pair and two classical
bits (``qnet.apps.nonlocal_gates``), so a run costs two pairs. Node B reports its outcomes to
node A over the connection at the end.

Model for Werner pairs of fidelities F₁ (oracle) and F₂ (diffusion): the distributed CZ is
exact but for a Z-type Pauli on (A, B) drawn uniformly from {I, Z_A, Z_B, Z_A Z_B} with
probability 4(1 − F)/3. After the oracle a non-identity such error turns the search onto a
wrong item with certainty; after the diffusion it flips the output bits it touches. Together
P(success) = F₁F₂ + (1 − F₁)(1 − F₂)/3, against 1/4 for guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from qnet.api.aio import AsyncNode, AsyncQubit, AsyncSocket
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
from qnet.apps.stats import Estimate, proportion

PORT = 7006
ITEMS = ((0, 0), (0, 1), (1, 0), (1, 1))
GUESS = 1 / len(ITEMS)


def expected_success(f_oracle: float, f_diffusion: float) -> float:
    return f_oracle * f_diffusion + (1 - f_oracle) * (1 - f_diffusion) / 3


@dataclass(frozen=True)
class GroverResult:
    node_a: str
    node_b: str
    runs: int
    #: Outcome counts per marked item.
    counts: dict[tuple[int, int], dict[tuple[int, int], int]]
    success: dict[tuple[int, int], Estimate]
    overall: Estimate
    pair_fidelity: float
    elapsed_s: float
    wall_s: float

    @property
    def expected(self) -> float:
        return expected_success(self.pair_fidelity, self.pair_fidelity)

    def summary(self) -> str:
        lines = [
            f"distributed Grover search over {self.node_a} (qubit 0) and {self.node_b}"
            f" (qubit 1), two EPR pairs per run: found the marked item in"
            f" {self.overall.format()} of {self.runs} runs (guessing 0.25; model"
            f" F₁F₂ + (1−F₁)(1−F₂)/3 = {self.expected:.3f} from the stack's pair fidelity"
            f" F = {self.pair_fidelity:.3f})"
        ]
        for item in ITEMS:
            row = self.counts[item]
            cells = " ".join(f"{o[0]}{o[1]}:{row.get(o, 0):3d}" for o in ITEMS)
            lines.append(
                f"  marked {item[0]}{item[1]}: {cells}   success {self.success[item].format()}"
            )
        lines.append(timing(self.elapsed_s, self.wall_s))
        return "\n".join(lines)


async def _flip_unless(q: AsyncQubit, bit: int) -> None:
    if not bit:
        await q.x()


async def _a_run(node: AsyncNode, sock: AsyncSocket, w0: int) -> tuple[int, list[float]]:
    q = await node.qubit()
    await q.h()
    await _flip_unless(q, w0)
    fids = [await control_side(sock, q)]  # oracle CZ
    await _flip_unless(q, w0)
    await q.h()
    await q.x()
    fids.append(await control_side(sock, q))  # diffusion CZ
    await q.x()
    await q.h()
    return await q.measure("Z"), fids


async def _b_run(node: AsyncNode, sock: AsyncSocket, w1: int) -> int:
    q = await node.qubit()
    await q.h()
    await _flip_unless(q, w1)
    await target_side(sock, q, gate="cz")
    await _flip_unless(q, w1)
    await q.h()
    await q.x()
    await target_side(sock, q, gate="cz")
    await q.x()
    await q.h()
    return await q.measure("Z")


async def grover(
    node_a: AsyncNode,
    node_b: AsyncNode,
    *,
    runs: int = 100,
    min_fidelity: float = 0.9,
    port: int = PORT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> GroverResult:
    """``runs`` searches for each of the four marked items."""
    check_positive_int("runs", runs)
    check_fidelity("min_fidelity", min_fidelity)
    plan = [item for item in ITEMS for _ in range(runs)]
    clock = Stopwatch.started()
    async with connection(node_a, node_b, port, min_fidelity=min_fidelity, timeout_s=timeout_s) as (
        a_sock,
        b_sock,
    ):

        async def a_role() -> tuple[list[int], list[int], list[float]]:
            outcomes, fids = [], []
            for w0, _ in plan:
                m, f = await _a_run(node_a, a_sock, w0)
                outcomes.append(m)
                fids.extend(f)
            theirs = await recv_json(a_sock, "grover-outcomes")
            return outcomes, [int(m) for m in theirs["outcomes"]], fids

        async def b_role() -> None:
            outcomes = [await _b_run(node_b, b_sock, w1) for _, w1 in plan]
            await send_json(b_sock, "grover-outcomes", outcomes=outcomes)

        (a_out, b_out, fids), _ = await run_both(a_role, b_role)
    counts: dict[tuple[int, int], dict[tuple[int, int], int]] = {i: {} for i in ITEMS}
    for item, m0, m1 in zip(plan, a_out, b_out, strict=True):
        counts[item][(m0, m1)] = counts[item].get((m0, m1), 0) + 1
    success = {item: proportion(counts[item].get(item, 0), runs) for item in ITEMS}
    found = sum(counts[item].get(item, 0) for item in ITEMS)
    return GroverResult(
        node_a.name,
        node_b.name,
        len(plan),
        counts,
        success,
        proportion(found, len(plan)),
        sum(fids) / len(fids),
        clock.elapsed_s,
        clock.wall_s,
    )
