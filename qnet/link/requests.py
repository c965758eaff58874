"""Request records of the distributed queue and their lifecycle, as a transition table.

::

    QUEUED ──ack──► ACTIVE ──complete──► DONE
       │              │                   │
       └────fail──────┴──fail/expire──► FAILED ◄──expire (pairs lost after their OK)

QUEUED: the origin issued it and the other end has not confirmed it yet (the master serves only
requests both ends know). ACTIVE: the master assigns pairs to it. DONE: every pair assigned
(master) or delivered (slave). FAILED: ended by an error; deliveries already assigned still
complete before the error is reported, so the layer above sees OKs, then the ERR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from qnet.errors import ProtocolError
from qnet.link.estimate import Plan
from qnet.link.events import BasisChoice, ErrorCode, Kind, PairOk

RequestKey = tuple[str, int]  # (origin node, create id at the origin)

#: A request for this many pairs or more is a stream: it never ends by itself (a circuit's
#: link requests are), so first-come first-served would give a link to the first stream for
#: good. Streams take turns instead, behind the finite requests, which keep their order.
STREAM_PAIRS = 1 << 31


class ReqState(Enum):
    QUEUED = "queued"
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"


class ReqInput(Enum):
    ACK = "ack"
    COMPLETE = "complete"
    FAIL = "fail"
    EXPIRE = "expire"


#: Every legal (state, input); anything else is an error.
TRANSITIONS: dict[tuple[ReqState, ReqInput], ReqState] = {
    (ReqState.QUEUED, ReqInput.ACK): ReqState.ACTIVE,
    (ReqState.QUEUED, ReqInput.FAIL): ReqState.FAILED,
    (ReqState.ACTIVE, ReqInput.COMPLETE): ReqState.DONE,
    (ReqState.ACTIVE, ReqInput.FAIL): ReqState.FAILED,
    (ReqState.ACTIVE, ReqInput.EXPIRE): ReqState.FAILED,
    (ReqState.DONE, ReqInput.EXPIRE): ReqState.FAILED,
}

TERMINAL = frozenset({ReqState.DONE, ReqState.FAILED})


def next_state(state: ReqState, event: ReqInput) -> ReqState:
    """The table lookup. Inputs come from the peer (or the peer's effect on us), so an illegal
    pair means the peer broke the protocol."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise ProtocolError(
            f"EGP request: {event.value!r} is illegal in state {state.value!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class Finish:
    """How a request ends, once ``keep_count`` pairs have been delivered."""

    code: ErrorCode | None  # None: completed
    seq_range: tuple[int, int] | None
    keep_count: int
    reason: str


@dataclass(slots=True)
class Request:
    key: RequestKey
    number: int
    min_fidelity: float
    deadline_ns: int | None
    kind: Kind
    basis: BasisChoice
    purpose: int
    priority: int
    plan: Plan
    #: Arrival order at the master: ties in priority are served in this order.
    order: int
    state: ReqState = ReqState.QUEUED
    #: Master: pairs assigned so far. Both: OKs emitted so far, and ready ones by index, so the
    #: layer above sees them in index order whatever order measurements and messages finish in.
    assigned: int = 0
    delivered: int = 0
    ready: dict[int, PairOk] = field(default_factory=dict)
    #: Herald sequences consumed by the request, for the seq_range of an error.
    seq_first: int = -1
    seq_last: int = -1
    #: Master: pairs waiting for a partner, per purification round.
    pool: dict[int, list[int]] = field(default_factory=dict)
    finish: Finish | None = None
    reported: bool = False
    #: Master: pairs in a row that fell below ``min_fidelity`` when offered.
    misses: int = 0
    #: The delay before delivery ``plan`` allows for (``EgpCore._planning_latency``).
    plan_latency_ns: int = 0
    #: Master, streams only: when it last got a pair (a counter of the core's; 0: never).
    turn: int = 0

    def fire(self, event: ReqInput) -> None:
        self.state = next_state(self.state, event)

    @property
    def open(self) -> bool:
        # Not in TERMINAL, by identity: read on every input, and enum hashing is slow.
        state = self.state
        return state is ReqState.QUEUED or state is ReqState.ACTIVE

    def consume(self, seq: int) -> None:
        self.seq_first = seq if self.seq_first < 0 else min(self.seq_first, seq)
        self.seq_last = max(self.seq_last, seq)

    def consumed_range(self) -> tuple[int, int] | None:
        return None if self.seq_first < 0 else (self.seq_first, self.seq_last)

    def service_key(self) -> tuple[int, int, int]:
        """Higher priority first; among equals, first come first served, except that a
        stream that got a pair goes behind the others (``turn``): streams share a link."""
        return (-self.priority, self.turn, self.order)
