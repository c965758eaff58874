"""The slave's side of the EGP: following the master's assignments, discards and ends.

The slave never decides which request a pair serves; it waits for the master's word, and
whatever arrives early (an assignment before its herald, or before the request's ADD) waits in
a buffer. These functions are part of ``EgpCore``, kept apart to keep modules short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qnet.errors import ProtocolError
from qnet.link.events import (
    Disarm,
    ErrorCode,
    Expire,
    PairAssign,
    PairDiscard,
    QueueAdd,
    Terminate,
)
from qnet.link.requests import Finish, ReqInput, ReqState, Request

if TYPE_CHECKING:
    from qnet.link.egp import EgpCore


def give_up_heralds(core: EgpCore, upto: int, now: int) -> None:
    """Slave: our heralds up to ``upto`` are lost (the physical layer dropped them). The
    armed qubit they used is gone too, so re-arm from scratch; what waited on them now
    sees them as lost (an assignment then expires, a purification round fails)."""
    core._lost.update(s for s in range(core.last_seq + 1, upto + 1))
    core.last_seq = upto
    for seq in [s for s in core._herald_due if s <= upto]:
        del core._herald_due[seq]
    if core._armed:
        core._out.append(Disarm(core._tag()))
        core._armed = 0
    for seq in sorted(s for s in core._waiting_seq if s <= upto):
        for msg in core._waiting_seq.pop(seq):
            core._dispatch(msg, now)


def known(core: EgpCore, msg: PairAssign | Terminate) -> Request | None:
    """The request a master message is about, or None if its ADD is still on the way (the
    message is then kept until it arrives)."""
    key = (msg.origin, msg.create_id)
    req = core.requests.get(key)
    if req is not None:
        if req.state is ReqState.QUEUED:
            req.fire(ReqInput.ACK)  # the master has it: this message proves it
        return req
    if msg.origin != core.peer:
        raise ProtocolError(f"EGP {type(msg).__name__} names unknown request {key}")
    core._early.setdefault(key, []).append(msg)
    return None


def on_queue_add(core: EgpCore, msg: QueueAdd, now: int) -> None:
    if msg.origin != core.peer:
        raise ProtocolError(f"EGP QueueAdd from the master names origin {msg.origin!r}")
    key = (msg.origin, msg.create_id)
    if key in core.requests:
        raise ProtocolError(f"EGP QueueAdd repeats request {key} under a new message id")
    req = core._request_from(msg)
    req.fire(ReqInput.ACK)
    for early in core._early.pop(key, []):
        core._dispatch(early, now)


def on_assign(core: EgpCore, msg: PairAssign, now: int) -> None:
    req = known(core, msg)
    if req is None:
        return
    if not 0 <= msg.index < req.number:
        raise ProtocolError(f"EGP PairAssign index {msg.index} outside request {req.key}")
    pair = core.pairs.get(msg.seq)
    past_end = req.finish is not None and msg.index >= req.finish.keep_count
    if pair is None:
        if msg.seq > core.last_seq:
            core._await_herald(msg.seq, msg, now)
        elif not past_end and req.key not in core._expire_sent:
            # Our half of a pair the master has delivered is gone: the promise is broken.
            core._expire_sent.add(req.key)
            core._send(
                Expire,
                now,
                origin=req.key[0],
                create_id=req.key[1],
                index=msg.index,
                seq=msg.seq,
            )
        return
    if past_end:
        core._free(msg.seq)
        return
    core._init_state(pair, msg.bright_state)
    core._deliver(req, pair, msg.index, now)


def on_discard(core: EgpCore, msg: PairDiscard, now: int) -> None:
    for seq in msg.seqs:
        if seq in core.pairs:
            core._free(seq)
        elif seq > core.last_seq:
            core._discard_later.add(seq)


def on_terminate(core: EgpCore, msg: Terminate, now: int) -> None:
    req = known(core, msg)
    if req is None:
        return
    try:
        code = ErrorCode(msg.code)
    except ValueError:
        raise ProtocolError(f"EGP Terminate has unknown code {msg.code!r}") from None
    if msg.keep_count < 0 or msg.keep_count > req.number:
        raise ProtocolError(f"EGP Terminate keep_count {msg.keep_count} is out of range")
    if req.finish is not None and (req.reported or msg.keep_count >= req.finish.keep_count):
        return  # an earlier end already covers this one
    if code is ErrorCode.EXPIRED:
        if req.state is not ReqState.FAILED:
            req.fire(ReqInput.EXPIRE)
    elif req.state is not ReqState.FAILED:
        req.fire(ReqInput.FAIL)
    seqs = None if msg.seq_first < 0 else (msg.seq_first, msg.seq_last)
    req.finish = Finish(code, seqs, msg.keep_count, msg.reason)
    core._check_finish(req)
