"""The master's side of the EGP: the decisions only it makes.

Which request a heralded pair serves (``place``, ``offer``), when a request ends and how
(``terminate``: completion is the core's; timeouts, NO_MEMORY, UNSUPPORTED after pairs keep
missing, CANCELLED, EXPIRED are here), and the master's handlers of the slave's messages. The
slave follows (``slave.py``). These functions are part of ``EgpCore``, kept apart to keep
modules short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qnet.errors import ProtocolError
from qnet.link import estimate, purify
from qnet.link.events import (
    Cancel,
    ErrorCode,
    Expire,
    MemoryFull,
    PairAssign,
    PairDiscard,
    QueueAdd,
    Terminate,
)
from qnet.link.requests import STREAM_PAIRS, Finish, ReqInput, ReqState, Request

if TYPE_CHECKING:
    from qnet.link.egp import EgpCore, Pair


def terminate(
    core: EgpCore,
    req: Request,
    code: ErrorCode,
    reason: str,
    now: int,
    *,
    expired: tuple[int, int] = (-1, -1),
) -> None:
    """Master: end ``req`` with ``code`` and tell the slave. For EXPIRED, ``expired`` is
    (index, seq) of the first lost pair: the slave keeps what came before it."""
    if code is ErrorCode.EXPIRED:
        keep = expired[0]
        seqs: tuple[int, int] | None = (expired[1], max(req.seq_last, expired[1]))
        if req.state is not ReqState.FAILED:
            req.fire(ReqInput.EXPIRE)
    else:
        keep = req.assigned
        seqs = req.consumed_range()
        req.fire(ReqInput.FAIL)
    req.finish = Finish(code, seqs, keep, reason)
    req.reported = False
    first, last = seqs if seqs is not None else (-1, -1)
    core._send(
        Terminate,
        now,
        origin=req.key[0],
        create_id=req.key[1],
        code=code.value,
        seq_first=first,
        seq_last=last,
        keep_count=keep,
        reason=reason,
    )
    release_pool(core, req, now)
    core._check_finish(req)


def note_full(core: EgpCore, now: int, reason: str, since: int | None = None) -> None:
    """Memory is full at one end (since ``since``, default now): fail the head request only
    once it has stayed full for the memory wait (a herald, which needs both ends armed, ends
    the streak)."""
    since = now if since is None else since
    if core._full_since is None or since < core._full_since:
        core._full_since = since
    waited = now - core._full_since
    if waited >= core._memory_wait_ns:
        core._full_since = None
        _memory_full(core, now, f"{reason} for {waited / 1e6:.3g} ms")


def _memory_full(core: EgpCore, now: int, reason: str) -> None:
    head = core._head()
    if head is not None:
        terminate(core, head, ErrorCode.NO_MEMORY, reason, now)


def place(core: EgpCore, pair: Pair, now: int) -> None:
    head = core._head()
    if head is None:
        discard(core, (pair.seq,), now)
        return
    if head.plan.rounds == 0:
        offer(core, head, pair, now)
    else:
        head.consume(pair.seq)
        head.pool.setdefault(0, []).append(pair.seq)
        purify.try_purify(core, head, now)
        if any(head.pool.values()):
            return  # a pair waits for its partner: the request keeps its turn
    if head.number >= STREAM_PAIRS:
        core._turns += 1
        head.turn = core._turns  # the next pair goes to the next request in line


def offer(core: EgpCore, req: Request, pair: Pair, now: int) -> None:
    """Assign a finished pair if it meets the request's fidelity now, else drop it (it may
    come from attempts armed for another request)."""
    if core._estimate(pair, now) < req.min_fidelity:
        discard(core, (pair.seq,), now)
        replan(core, req)
        req.misses += 1
        if req.misses >= core.config.max_misses:
            reason = (
                f"{req.misses} pairs in a row fell below min_fidelity {req.min_fidelity}"
                f" at delivery on link {core.link_id} (the plan expected"
                f" {req.plan.fidelity:.4f}): the link cannot reach it now"
            )
            terminate(core, req, ErrorCode.UNSUPPORTED, reason, now)
        return
    req.misses = 0
    index = req.assigned
    req.assigned += 1
    req.consume(pair.seq)
    core._send(
        PairAssign,
        now,
        seq=pair.seq,
        origin=req.key[0],
        create_id=req.key[1],
        index=index,
        bright_state=pair.alpha if pair.alpha is not None else 0.0,
    )
    core._deliver(req, pair, index, now)
    if req.assigned == req.number:
        req.fire(ReqInput.COMPLETE)
        release_pool(core, req, now)


def replan(core: EgpCore, req: Request) -> None:
    """Master: a pair missed ``req``'s target; if the measured delays have outgrown what
    its plan allowed for, plan again (usually a smaller bright state), so later pairs
    meet the target at delivery instead of being thrown away."""
    latency = core._planning_latency()
    if latency <= req.plan_latency_ns:
        return
    plan = estimate.plan(core.config.link, *core.nodes, req.min_fidelity, latency)
    req.plan_latency_ns = latency
    if plan is not None:  # else keep trying the old one; the misses guard decides
        req.plan = plan


def discard(core: EgpCore, seqs: tuple[int, ...], now: int) -> None:
    for seq in seqs:
        core._free(seq)
    if seqs:
        core._send(PairDiscard, now, seqs=seqs)


def release_pool(core: EgpCore, req: Request, now: int) -> None:
    seqs = tuple(s for pool in req.pool.values() for s in pool)
    req.pool.clear()
    discard(core, seqs, now)


def on_queue_add(core: EgpCore, msg: QueueAdd, now: int) -> None:
    if msg.origin != core.peer:
        raise ProtocolError(f"EGP QueueAdd from the slave names origin {msg.origin!r}")
    key = (msg.origin, msg.create_id)
    if key in core.requests:
        raise ProtocolError(f"EGP QueueAdd repeats request {key} under a new message id")
    req = core._request_from(msg)
    req.fire(ReqInput.ACK)
    if key in core._cancels:
        core._cancels.discard(key)
        terminate(core, req, ErrorCode.CANCELLED, f"cancelled by {msg.origin}", now)
    elif sum(r.open for r in core._live_requests()) > core.config.max_queue:
        terminate(core, req, ErrorCode.DENIED, "the master's queue is full", now)
    elif req.plan.rounds < 0:
        terminate(core, req, ErrorCode.UNSUPPORTED, "fidelity out of reach", now)
    elif req.deadline_ns is not None and req.deadline_ns <= now:
        terminate(core, req, ErrorCode.TIMEOUT, "max_time passed before queueing", now)


def on_expire(core: EgpCore, msg: Expire, now: int) -> None:
    req = core.requests.get((msg.origin, msg.create_id))
    if req is None or not 0 <= msg.index < req.assigned:
        raise ProtocolError(f"EGP Expire for a pair never assigned: {msg}")
    if req.finish is not None and req.finish.code is ErrorCode.EXPIRED:
        return
    reason = f"{core.peer} lost its half of pair {msg.seq} after delivery was promised"
    terminate(core, req, ErrorCode.EXPIRED, reason, now, expired=(msg.index, msg.seq))


def on_cancel(core: EgpCore, msg: Cancel, now: int) -> None:
    if msg.origin != core.peer:
        raise ProtocolError(f"EGP Cancel from the slave names origin {msg.origin!r}")
    key = (msg.origin, msg.create_id)
    req = core.requests.get(key)
    if req is None:
        core._cancels.add(key)  # reordered ahead of its QueueAdd
    elif req.open:
        terminate(core, req, ErrorCode.CANCELLED, f"cancelled by {msg.origin}", now)


def on_memory_full(core: EgpCore, msg: MemoryFull, now: int) -> None:
    note_full(core, now, f"{core.peer} has no free memory qubit", now - msg.full_for_ns)
