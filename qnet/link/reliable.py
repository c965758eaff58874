"""Reliable delivery of EGP peer messages: retransmission until acknowledged, duplicate filter.

The link's classical channel may lose, duplicate, reorder and delay messages. Each message but
``Ack`` carries a ``msg_id`` unique per sender; the sender keeps it until an ``Ack`` names it,
retransmitting with exponential back-off; the receiver acknowledges every copy (so a lost Ack
is repaired by the next copy) but hands only the first to the protocol. Order is not restored
here: the protocol tolerates reordering itself (it buffers what it cannot use yet).

Round trips are measured on the way (``rtt``): each message acknowledged without having been
retransmitted is a sample (Karn's rule), smoothed as RFC 6298 smooths them.
"""

from __future__ import annotations

from dataclasses import dataclass

from qnet.link.events import PeerMessage


class SmoothedDelay:
    """A delay's smoothed mean and mean deviation from samples (RFC 6298's estimator, with
    its gains 1/8 and 1/4); ``bound`` is mean + 4 deviations, which few samples exceed."""

    __slots__ = ("deviation_ns", "mean_ns", "samples")

    def __init__(self) -> None:
        self.mean_ns = 0.0
        self.deviation_ns = 0.0
        self.samples = 0

    def sample(self, delay_ns: int) -> None:
        if self.samples == 0:
            self.mean_ns, self.deviation_ns = float(delay_ns), delay_ns / 2
        else:
            self.deviation_ns += (abs(self.mean_ns - delay_ns) - self.deviation_ns) / 4
            self.mean_ns += (delay_ns - self.mean_ns) / 8
        self.samples += 1

    def bound(self) -> int:
        return round(self.mean_ns + 4 * self.deviation_ns) if self.samples else 0


@dataclass(slots=True)
class _Pending:
    message: PeerMessage
    due_ns: int
    rto_ns: int
    sent_ns: int
    retransmitted: bool = False


class ReliableSender:
    """Retransmission state of one sender. Sans-IO: time comes in, messages come out."""

    def __init__(self, *, rto_ns: int, max_rto_ns: int) -> None:
        self._rto_ns = rto_ns
        self._max_rto_ns = max_rto_ns
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self.rtt = SmoothedDelay()

    def new_id(self) -> int:
        msg_id = self._next_id
        self._next_id += 1
        return msg_id

    def track(self, message: PeerMessage, msg_id: int, now: int) -> None:
        self._pending[msg_id] = _Pending(message, now + self._rto_ns, self._rto_ns, now)

    def acknowledge(
        self, msg_ids: tuple[int, ...], now: int, delays_ns: tuple[int, ...] = ()
    ) -> list[PeerMessage]:
        """Forget acknowledged messages; returns those acknowledged for the first time. An Ack
        for an unknown id is a late duplicate, not an error. ``delays_ns``: how long the peer
        held each acknowledgement (not part of the round trip)."""
        done = []
        for i, msg_id in enumerate(msg_ids):
            entry = self._pending.pop(msg_id, None)
            if entry is not None:
                done.append(entry.message)
                if not entry.retransmitted:  # else the Ack may answer either copy
                    held = delays_ns[i] if i < len(delays_ns) else 0
                    self.rtt.sample(max(0, now - entry.sent_ns - held))
        return done

    def due(self, now: int) -> list[PeerMessage]:
        out = []
        for entry in self._pending.values():
            if entry.due_ns <= now:
                entry.rto_ns = min(2 * entry.rto_ns, self._max_rto_ns)
                entry.due_ns = now + entry.rto_ns
                entry.retransmitted = True
                out.append(entry.message)
        return out

    def next_deadline(self) -> int | None:
        best: int | None = None
        for entry in self._pending.values():  # a plain loop: read after every input
            if best is None or entry.due_ns < best:
                best = entry.due_ns
        return best

    def forget_all(self) -> None:
        """Stop retransmitting everything (the receiver is gone)."""
        self._pending.clear()

    def restart_ids(self) -> None:
        """Number from 1 again (the receiver restarted, with a fresh duplicate filter)."""
        self._pending.clear()
        self._next_id = 1

    @property
    def unacknowledged(self) -> int:
        return len(self._pending)


class Deduplicator:
    """Remembers which message ids were seen: ids below ``_floor`` all were, the rest are in a
    set, so memory stays proportional to the reordering window rather than the history."""

    def __init__(self) -> None:
        self._floor = 1
        self._above: set[int] = set()

    def first_time(self, msg_id: int) -> bool:
        if msg_id < self._floor or msg_id in self._above:
            return False
        self._above.add(msg_id)
        while self._floor in self._above:
            self._above.discard(self._floor)
            self._floor += 1
        return True
