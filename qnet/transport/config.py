"""Settings of the transport core (times in ns of the clock the driver passes as ``now``)."""

from __future__ import annotations

from dataclasses import dataclass

from qnet.errors import InvalidArgument

_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class TransportConfig:
    #: Pairs of the epr stream an end holds for its application ahead of its ``epr`` calls.
    pair_window: int = 4
    #: Bytes of complete messages an end buffers for its application ahead of ``recv``.
    data_window_bytes: int = 256 * 1024
    #: Largest message piece in one record (well below a network datagram's 1 MiB).
    segment_bytes: int = 8 * 1024
    #: Records a direction may have sent and not yet had acknowledged.
    max_in_flight: int = 64
    #: Retransmission timeout before any round trip was measured (RFC 6298's initial RTO,
    #: scaled to a network whose round trips are milliseconds, not a WAN's hundreds of them).
    initial_rto_ns: int = 200 * _MS
    min_rto_ns: int = 1 * _MS
    max_rto_ns: int = 2_000 * _MS
    #: A record unacknowledged this long since it was first sent ends the connection (Timeout).
    give_up_ns: int = 15_000 * _MS
    #: Connect → established (both ends), including the circuit's setup.
    handshake_timeout_ns: int = 10_000 * _MS
    #: Nothing heard from the peer for this long ends the connection (Timeout); 0: never. A
    #: connection whose circuit streams pairs hears its peer's pair uses and acknowledgements;
    #: an idle one pauses its circuit (``pause_after_ns``) and then hears nothing.
    idle_timeout_ns: int = 0
    #: TIME_WAIT: how long a closed connection still answers its peer's retransmissions.
    linger_ns: int = 1_000 * _MS
    #: Pairs of a circuit no connection claimed yet (its HandshakeAck is late) are kept this
    #: long, then freed and the circuit closed.
    orphan_timeout_ns: int = 10_000 * _MS
    #: A connection that wants no pairs at either end (no call waiting, both epr windows
    #: full) this long pauses its circuit, which otherwise streams pairs both ends free; the
    #: next call resumes it. Long enough that a busy stream, whose windows fill and drain
    #: with every pair, never pauses between calls.
    pause_after_ns: int = 10 * _MS
    #: Pairs an end that sends qubits keeps ready for its next ``send_qubit`` calls (0: none),
    #: so that a teleport waits for no pair; it keeps them while it sent a qubit within
    #: ``prefetch_idle_ns``, and gives back one that waited ``max_ready_age_ns`` (it
    #: decoheres meanwhile) for a fresh one.
    teleport_prefetch: int = 2
    prefetch_idle_ns: int = 20 * _MS
    max_ready_age_ns: int = 20 * _MS
    #: Pairs the accepting end keeps undecided when no demand of either end wants them, for
    #: the next call, rather than releasing them at once; each for up to
    #: ``max_ready_age_ns``. The memory they hold at both ends slows the circuit down to the
    #: applications' pace, where releasing them cost a whole end-to-end pair's work each.
    hold_pairs: int = 2
    #: Established connections a listener keeps for ``accept`` (plus those handshaking).
    backlog: int = 16
    #: Out-of-order records named in one Ack.
    max_selective: int = 16
    #: An Ack waits up to this long for more records to cover (RFC 1122's delayed ACK):
    #: through daemons every transport message crosses each node of the path, and an Ack
    #: per record was half of them. A gap, a duplicate, a Fin or a handshake is acknowledged
    #: at once, and so is every ``records_per_ack``-th record.
    ack_delay_ns: int = 2 * _MS
    #: Records one Ack covers at most (RFC 1122 says two; QUIC lets the sender ask for
    #: more): through daemons four sent 6 % fewer peer messages per pair or teleport than
    #: two (eight no fewer), the window (``max_in_flight``) being far larger.
    records_per_ack: int = 4

    def check(self) -> None:
        for name in (
            "pair_window",
            "data_window_bytes",
            "segment_bytes",
            "max_in_flight",
            "initial_rto_ns",
            "min_rto_ns",
            "max_rto_ns",
            "give_up_ns",
            "handshake_timeout_ns",
            "linger_ns",
            "orphan_timeout_ns",
            "pause_after_ns",
            "prefetch_idle_ns",
            "max_ready_age_ns",
            "backlog",
            "max_selective",
            "records_per_ack",
        ):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"TransportConfig.{name} must be > 0")
        if self.hold_pairs < 0:
            raise InvalidArgument("TransportConfig.hold_pairs must be ≥ 0")
        if self.teleport_prefetch < 0:
            raise InvalidArgument("TransportConfig.teleport_prefetch must be ≥ 0")
        if self.idle_timeout_ns < 0:
            raise InvalidArgument("TransportConfig.idle_timeout_ns must be ≥ 0")
        if self.ack_delay_ns < 0:
            raise InvalidArgument("TransportConfig.ack_delay_ns must be ≥ 0 (0: no delay)")
        if not self.min_rto_ns <= self.max_rto_ns:
            raise InvalidArgument("TransportConfig: min_rto_ns must not exceed max_rto_ns")
