"""One direction's reliable, ordered stream of records: sequence numbers, cumulative and
selective acknowledgements, retransmission with exponential back-off, message flow control.

The sender numbers records as it puts them on the wire (1, 2, …), keeps them until a
cumulative ``Ack`` covers them, and retransmits on its timer: RFC 6298's RTO from the smoothed
round trip (samples only from records acknowledged without a retransmission, Karn's rule),
doubled on each expiry up to a ceiling, back to the estimate once an acknowledgement makes
progress. Records the receiver holds out of order (``Ack.selective``) are not retransmitted.
Three acknowledgements in a row that make no progress retransmit the first hole at once.

Records wait in two queues. Control records (pair uses and demand, teleport bits, window
updates) go first and are never held back by flow control: they are small, and a pair stream
must not stall behind messages the other application has not read. Messages are cut into
segments only as they go out, as much as the peer's ``data_limit`` allows; the ``Fin`` queues
behind them. At most ``max_in_flight`` records are unacknowledged at once.

The receiver hands records over once each, in order, and acknowledges every copy (a lost Ack
is repaired by the next retransmission).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

from qnet.errors import ProtocolError
from qnet.link.reliable import SmoothedDelay
from qnet.transport.config import TransportConfig
from qnet.transport.events import (
    Fin,
    PairDemand,
    PairUses,
    RecordMessage,
    Segment,
    Window,
)

#: A receiver refuses a record this far beyond the next one it expects (no sender has that
#: many in flight; such a number is a peer's bug, not reordering).
MAX_AHEAD = 1 << 16


@dataclass(slots=True)
class _InFlight:
    record: RecordMessage
    first_sent_ns: int
    sent_ns: int
    retransmitted: bool = False
    #: The receiver holds it out of order (named in an Ack's ``selective``).
    held: bool = False


@dataclass(slots=True)
class _Message:
    """A message not yet entirely on the wire."""

    data: bytes
    offset: int = 0


class RecordSender:
    def __init__(self, config: TransportConfig, dst_conn: int, src_conn: int) -> None:
        self._config = config
        self.dst_conn = dst_conn
        self.src_conn = src_conn
        self._control: deque[RecordMessage] = deque()
        self._messages: deque[_Message | Fin] = deque()
        self._in_flight: dict[int, _InFlight] = {}
        self.next_seq = 1
        #: Message bytes put on the wire so far, and how far the peer lets us go.
        self.data_sent = 0
        self.data_limit = 0
        self.rtt = SmoothedDelay()
        self._rto_ns = config.initial_rto_ns
        self.timer_ns: int | None = None
        self._acked_below = 1
        self._stalled_acks = 0
        self.retransmissions = 0

    # -- queueing ------------------------------------------------------------------------------

    def queue_control(self, record: RecordMessage) -> None:
        """Queue a control record (its ``seq`` is set when it goes out). Cumulative records
        still waiting are merged rather than queued twice: a ``Window`` or ``PairDemand``
        replaces the waiting one, consecutive ``PairUses`` join."""
        if isinstance(record, Window | PairDemand):
            for i, waiting in enumerate(self._control):
                if type(waiting) is type(record):
                    self._control[i] = record
                    return
        if isinstance(record, PairUses) and self._control:
            last = self._control[-1]
            if isinstance(last, PairUses) and last.first_index + len(last.uses) == (
                record.first_index
            ):
                self._control[-1] = dataclasses.replace(last, uses=last.uses + record.uses)
                return
        self._control.append(record)

    def queue_message(self, data: bytes) -> None:
        self._messages.append(_Message(data))

    def queue_fin(self) -> None:
        self._messages.append(Fin(self.dst_conn, self.src_conn, 0))

    @property
    def waiting(self) -> bool:
        """Anything queued or unacknowledged."""
        return bool(self._control or self._messages or self._in_flight)

    @property
    def blocked_bytes(self) -> int:
        """Message bytes queued and not yet sent."""
        return sum(len(m.data) - m.offset for m in self._messages if isinstance(m, _Message))

    # -- sending -------------------------------------------------------------------------------

    def transmit(self, now: int) -> list[RecordMessage]:
        """What may go out now, numbered, in order."""
        out: list[RecordMessage] = []
        while len(self._in_flight) < self._config.max_in_flight:
            record = self._next_record()
            if record is None:
                break
            record = _numbered(record, self.next_seq)
            self._in_flight[self.next_seq] = _InFlight(record, now, now)
            self.next_seq += 1
            out.append(record)
        if out and self.timer_ns is None:
            self.timer_ns = now + self._rto_ns
        return out

    def _next_record(self) -> RecordMessage | None:
        if self._control:
            return self._control.popleft()
        if not self._messages:
            return None
        head = self._messages[0]
        if isinstance(head, Fin):
            self._messages.popleft()
            return head
        remaining = len(head.data) - head.offset
        room = self.data_limit - self.data_sent
        size = min(remaining, room, self._config.segment_bytes)
        if size <= 0 and remaining > 0:
            return None  # the peer's window is full; its Window record reopens it
        piece = head.data[head.offset : head.offset + size]
        head.offset += size
        self.data_sent += size
        last = head.offset == len(head.data)
        if last:
            self._messages.popleft()
        return Segment(self.dst_conn, self.src_conn, 0, piece, int(last))

    # -- acknowledgements ----------------------------------------------------------------------

    def on_ack(self, next_seq: int, selective: tuple[int, ...], now: int) -> list[RecordMessage]:
        """Forget what ``next_seq`` covers; returns records to retransmit at once (a fast
        retransmission), if any."""
        if next_seq > self.next_seq or any(s >= self.next_seq for s in selective):
            raise ProtocolError(f"Ack for record {next_seq} or beyond, never sent")
        progress = False
        for seq in [s for s in self._in_flight if s < next_seq]:
            entry = self._in_flight.pop(seq)
            if not entry.retransmitted:
                self.rtt.sample(now - entry.sent_ns)
            progress = True
        for seq in selective:
            entry_held = self._in_flight.get(seq)
            if entry_held is not None:
                entry_held.held = True
        if progress or next_seq > self._acked_below:
            self._acked_below = max(self._acked_below, next_seq)
            self._stalled_acks = 0
            self._rto_ns = self._estimated_rto()
            self.timer_ns = now + self._rto_ns if self._in_flight else None
            return []
        if not self._in_flight:
            return []
        self._stalled_acks += 1
        if self._stalled_acks != 3:
            return []
        first = self._in_flight[min(self._in_flight)]
        if first.held:
            return []
        return self._resend([first], now)

    def _estimated_rto(self) -> int:
        if not self.rtt.samples:
            return self._config.initial_rto_ns
        # The peer may hold its Ack back for up to ack_delay_ns (QUIC adds its max_ack_delay
        # to the probe timeout likewise): without it, a round trip well under the delay
        # times out before the Ack comes and every such record goes twice.
        bound = self.rtt.bound() + self._config.ack_delay_ns
        return max(self._config.min_rto_ns, min(bound, self._config.max_rto_ns))

    # -- timer ---------------------------------------------------------------------------------

    def given_up(self, now: int) -> bool:
        """A record went unacknowledged for ``give_up_ns``."""
        oldest = min((e.first_sent_ns for e in self._in_flight.values()), default=None)
        return oldest is not None and now - oldest >= self._config.give_up_ns

    def on_timer(self, now: int) -> list[RecordMessage]:
        """Retransmit every record the receiver does not hold, and back off."""
        if self.timer_ns is None or self.timer_ns > now:
            return []
        if not self._in_flight:
            self.timer_ns = None
            return []
        self._rto_ns = min(2 * self._rto_ns, self._config.max_rto_ns)
        self.timer_ns = now + self._rto_ns
        return self._resend([e for e in self._in_flight.values() if not e.held], now)

    def _resend(self, entries: list[_InFlight], now: int) -> list[RecordMessage]:
        for entry in entries:
            entry.retransmitted = True
            entry.sent_ns = now
        self.retransmissions += len(entries)
        return [e.record for e in entries]

    def deadline(self) -> int | None:
        return self.timer_ns

    def abandon(self) -> None:
        """The peer is gone: stop retransmitting (nothing more will be acknowledged)."""
        self._control.clear()
        self._messages.clear()
        self._in_flight.clear()
        self.timer_ns = None

    def give_up_deadline(self) -> int | None:
        oldest = min((e.first_sent_ns for e in self._in_flight.values()), default=None)
        return None if oldest is None else oldest + self._config.give_up_ns


def _numbered(record: RecordMessage, seq: int) -> RecordMessage:
    numbered: RecordMessage = dataclasses.replace(record, seq=seq)  # type: ignore[type-var]
    return numbered


class RecordReceiver:
    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self.next_seq = 1
        self._early: dict[int, RecordMessage] = {}
        #: Some record arrived since the last Ack; how many; whether the Ack may not wait
        #: (a gap or a duplicate: the sender needs to know at once).
        self.ack_due = False
        self.unacked = 0
        self.ack_now = False
        self.duplicates = 0

    def accept(self, record: RecordMessage) -> list[RecordMessage]:
        """The records that are now next in order (none for a duplicate or a future one)."""
        if record.seq < 1 or record.seq >= self.next_seq + MAX_AHEAD:
            raise ProtocolError(f"record number {record.seq} is out of range")
        self.ack_due = True
        self.unacked += 1
        if record.seq < self.next_seq or record.seq in self._early:
            self.duplicates += 1
            self.ack_now = True
            return []
        if record.seq != self.next_seq:
            self.ack_now = True
        self._early[record.seq] = record
        ready: list[RecordMessage] = []
        while self.next_seq in self._early:
            ready.append(self._early.pop(self.next_seq))
            self.next_seq += 1
        return ready

    def acked(self) -> None:
        self.ack_due = self.ack_now = False
        self.unacked = 0

    def selective(self) -> tuple[int, ...]:
        return tuple(sorted(self._early)[: self._config.max_selective])
