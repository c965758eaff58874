"""DEJMPS purification rounds between the two EGP cores of a link.

The master picks two pairs of the same round of one request (``keep`` and ``sacrifice``),
applies RX(π/2) to both its halves and CNOT keep→sacrifice, measures its sacrifice half in Z,
and sends ``Purify`` with its outcome. The slave first turns both pairs into Φ+ (X^x Z^z on its
halves: pairs are heralded as Ψ±), applies RX(−π/2) and the CNOT, measures, and answers with
``PurifyResult``. The round succeeds when the outcomes are equal; both ends then compute the
same predicted state for the kept pair (each message carries the sender's operation time, so
both know how long every half idled), which is Φ+-type (Bell index 0). On failure each end
frees its kept half. A pair the slave lost makes the round fail (outcome −1).

These functions are the purification part of ``EgpCore``, kept apart to keep modules short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qnet.errors import ProtocolError
from qnet.link import estimate, master
from qnet.link.events import Gates, MeasureQubit, Purify, PurifyResult
from qnet.link.requests import ReqState, Request, RequestKey
from qnet.physical.gates import Basis, GateName, Matrix

if TYPE_CHECKING:
    from qnet.link.egp import EgpCore, Pair


@dataclass(slots=True)
class Round:
    """A DEJMPS round the master has started and the slave has not answered yet."""

    key: RequestKey
    keep: Pair
    sacrifice: Pair
    round: int
    #: The master's op time, and its outcome once measured.
    op_time_ns: int
    outcome: int = -1


def try_purify(core: EgpCore, req: Request, now: int) -> None:
    """Master: start a round for every two pairs waiting in the same round of ``req``."""
    for rnd in sorted(req.pool):
        pool = req.pool[rnd]
        while len(pool) >= 2:
            keep, sac = core.pairs[pool.pop(0)], core.pairs.pop(pool.pop(0))
            angle = estimate.MASTER_ANGLE
            ops = (
                (GateName.RX, (keep.qubit,), angle),
                (GateName.RX, (sac.qubit,), angle),
                (GateName.CNOT, (keep.qubit, sac.qubit), 0.0),
            )
            core._out.append(Gates(core._tag(), ops))
            tag = core._tag()
            core._pending[tag] = ("purify", Round(req.key, keep, sac, rnd, now))
            core._out.append(MeasureQubit(tag, sac.qubit, Basis.Z))


def on_purify(core: EgpCore, msg: Purify, now: int) -> None:
    """Slave: do our half of the round the master started, once both pairs are heralded."""
    top = max(msg.keep_seq, msg.sacrifice_seq)
    if top > core.last_seq:
        core._await_herald(top, msg, now)
        return
    keep, sac = core.pairs.get(msg.keep_seq), core.pairs.get(msg.sacrifice_seq)
    if keep is None or sac is None or keep is sac:
        for pair in (keep, sac):
            if pair is not None and pair.seq in core.pairs:
                core._free(pair.seq)
        core._send(
            PurifyResult,
            now,
            keep_seq=msg.keep_seq,
            sacrifice_seq=msg.sacrifice_seq,
            outcome=-1,
            op_time_ns=now,
        )
        return
    core._init_state(keep, msg.keep_bright_state)
    core._init_state(sac, msg.sacrifice_bright_state)
    ops: list[tuple[GateName, tuple[int, ...], float]] = []
    for pair in (keep, sac):
        ops += [(g, (pair.qubit,), 0.0) for g in estimate.correction_gates(pair.bell_index)]
        ops.append((GateName.RX, (pair.qubit,), estimate.SLAVE_ANGLE))
    ops.append((GateName.CNOT, (keep.qubit, sac.qubit), 0.0))
    core._out.append(Gates(core._tag(), tuple(ops)))
    del core.pairs[sac.seq]
    tag = core._tag()
    core._pending[tag] = ("purify_slave", msg, keep, sac, now)
    core._out.append(MeasureQubit(tag, sac.qubit, Basis.Z))


def purify_measured(core: EgpCore, action: tuple[Any, ...], outcome: int, now: int) -> None:
    """Either end: our sacrifice half has been measured."""
    if action[0] == "purify":
        rnd: Round = action[1]
        rnd.outcome = outcome
        core.purifying[rnd.keep.seq] = rnd
        core._send(
            Purify,
            now,
            keep_seq=rnd.keep.seq,
            sacrifice_seq=rnd.sacrifice.seq,
            keep_bright_state=_alpha(rnd.keep),
            sacrifice_bright_state=_alpha(rnd.sacrifice),
            outcome=outcome,
            op_time_ns=rnd.op_time_ns,
        )
        return
    _, msg, keep, sac, op_time = action
    if outcome == msg.outcome:
        _succeed(core, keep, sac, msg.op_time_ns, op_time)
    else:
        core._free(keep.seq)
    core._send(
        PurifyResult,
        now,
        keep_seq=keep.seq,
        sacrifice_seq=sac.seq,
        outcome=outcome,
        op_time_ns=op_time,
    )


def on_purify_result(core: EgpCore, msg: PurifyResult, now: int) -> None:
    """Master: the slave's half of a round; decide what the kept pair does next."""
    rnd = core.purifying.pop(msg.keep_seq, None)
    if rnd is None or rnd.sacrifice.seq != msg.sacrifice_seq:
        raise ProtocolError(f"EGP PurifyResult for no round in progress: {msg}")
    keep = rnd.keep
    core.counters["rounds"] += 1
    if msg.outcome < 0 or msg.outcome != rnd.outcome:
        core.counters["failed_rounds"] += 1
        core._free(keep.seq)  # the slave frees its half on its own
        return
    _succeed(core, keep, rnd.sacrifice, rnd.op_time_ns, msg.op_time_ns)
    req = core.requests[rnd.key]
    if req.state is not ReqState.ACTIVE:
        master.discard(core, (keep.seq,), now)
    elif rnd.round + 1 >= req.plan.rounds:
        master.offer(core, req, keep, now)
    else:
        req.pool.setdefault(rnd.round + 1, []).append(keep.seq)
        try_purify(core, req, now)


def _succeed(core: EgpCore, keep: Pair, sac: Pair, t_master: int, t_slave: int) -> None:
    """Both ends: the kept pair's predicted state after a successful round."""
    _, rho = estimate.dejmps(
        _prepared(core, keep, t_master, t_slave),
        _prepared(core, sac, t_master, t_slave),
        *core.nodes,
    )
    keep.rho = rho
    keep.times = (t_master, t_slave)
    keep.bell_index = 0


def _prepared(core: EgpCore, pair: Pair, t_master: int, t_slave: int) -> Matrix:
    """A pair's state when the two ends operated on it, after the slave's correction."""
    assert pair.rho is not None
    dt = (t_master - pair.times[0], t_slave - pair.times[1])
    rho = estimate.age(pair.rho, core.nodes, dt)
    return estimate.correct_to_phi_plus(rho, pair.bell_index, core.nodes[1])


def _alpha(pair: Pair) -> float:
    return pair.alpha if pair.alpha is not None else 0.0
