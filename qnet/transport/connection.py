"""One connection's state at one end: its records in both directions, classical messages,
flow control, and its pair stream. ``TransportCore`` owns the connections and does the
handshake, dispatch, timers and endings; this module does what happens inside one.

Message flow control: this end grants its peer message bytes up to ``granted`` (counted from
the connection's start), i.e. what it received in order plus the room left in its window for
complete messages the application has not read. A message still arriving does not count, so a
message larger than the window still gets through. A new grant goes out as a ``Window`` record
once it has grown by a quarter of the window, or at once if the peer has used all it had.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from enum import Enum

from qnet.errors import ProtocolError
from qnet.network.circuit_events import CircuitId
from qnet.transport.config import TransportConfig
from qnet.transport.events import (
    Ack,
    CloseCircuit,
    Closed,
    ConnId,
    Data,
    EprCut,
    EprRelease,
    Fin,
    HandshakeAck,
    Output,
    PairDemand,
    PairsEnd,
    PairUses,
    PauseCircuit,
    PeerFinished,
    RecordMessage,
    ResumeCircuit,
    Segment,
    SendTo,
    Syn,
    SynAck,
    Teleport,
    Window,
)
from qnet.transport.pairs import PairStream
from qnet.transport.reliable import RecordReceiver, RecordSender
from qnet.transport.states import (
    HANDSHAKING,
    OUTPUT_CLOSED,
    PEER_OUTPUT_CLOSED,
    ConnInput,
    ConnState,
    next_conn_state,
)


class Role(Enum):
    #: Called ``connect``; opens the circuit (its head) and follows the pair uses.
    CONNECTOR = "connector"
    #: Came in through a listener; the circuit's tail, it decides the pair uses.
    ACCEPTOR = "acceptor"


class Connection:
    def __init__(
        self,
        conn_id: ConnId,
        role: Role,
        *,
        local_port: int,
        remote: str,
        remote_port: int,
        min_fidelity: float,
        peer_conn: int,
        peer_pair_window: int,
        config: TransportConfig,
        out: list[Output],
        new_tag: Callable[[], int],
        new_measure_tag: Callable[[ConnId], int],
        now: int,
    ) -> None:
        self.id = conn_id
        self.role = role
        self.state = ConnState.SYN_SENT if role is Role.CONNECTOR else ConnState.SYN_RECEIVED
        self.local_port = local_port
        self.remote = remote
        self.remote_port = remote_port
        self.min_fidelity = min_fidelity
        #: The peer's id for this connection; 0 until the connector hears the SynAck.
        self.peer_conn = peer_conn
        self.config = config
        self._out = out
        self.circuit: CircuitId | None = None
        #: We asked for the circuit to close; the network layer said it ended.
        self.close_sent = False
        self.circuit_ended = False
        #: Allocator: the circuit is paused by us; since when no end wanted a pair (None
        #: while some demand is open or the circuit is paused).
        self.circuit_paused = False
        self.idle_since: int | None = None
        #: Since when an Ack waits to cover a second record (``TransportConfig.ack_delay_ns``).
        self.ack_since: int | None = None
        self.sender = RecordSender(config, peer_conn, conn_id)
        self.receiver = RecordReceiver(config)
        self.pairs = PairStream(
            conn_id,
            allocator=role is Role.ACCEPTOR,
            window=config.pair_window,
            # The Syn's window only says how far the peer may go: it holds no pair ahead of
            # its application's calls before it uses the stream (its PairDemand says so).
            peer_epr_limit=0,
            prefetch=config.teleport_prefetch,
            prefetch_idle_ns=config.prefetch_idle_ns,
            max_ready_age_ns=config.max_ready_age_ns,
            hold=config.hold_pairs,
            out=out,
            new_tag=new_tag,
            new_measure_tag=lambda: new_measure_tag(conn_id),
        )
        self.demand_sent = self.pairs.demand()
        # Messages arriving: bytes received in order, the message being assembled, complete
        # messages not yet read, ``recv`` calls not yet answered, bytes granted to the peer.
        self.in_bytes = 0
        self.partial: list[bytes] = []
        self.complete: deque[bytes] = deque()
        self.complete_bytes = 0
        self.recv_wanted = 0
        self.granted = config.data_window_bytes
        # Output closing: ``close`` was called; the Fin is queued (after every qubit sent).
        self.close_requested = False
        self.fin_queued = False
        #: The peer forgot the connection after both outputs closed (its Reset): our Fin's
        #: acknowledgement will never come, and is not needed.
        self.peer_gone = False
        # Handshake: deadline, next retransmission of Syn/SynAck and its back-off.
        self.handshake_deadline: int | None = now + config.handshake_timeout_ns
        self.handshake_rto = config.initial_rto_ns
        self.handshake_due: int | None = now + self.handshake_rto
        self.handshake_retransmitted = False
        self.handshake_sent_ns = now
        #: Connector: the acceptor answered the HandshakeAck.
        self.handshake_confirmed = False
        self.last_heard_ns = now
        self.linger_until: int | None = None
        #: Acceptor: handed to the application by ``accept``.
        self.accepted = role is Role.CONNECTOR
        self.listener_port: int | None = None

    # -- state -----------------------------------------------------------------------------------

    def transition(self, event: ConnInput) -> ConnState:
        """Apply a table transition (``IllegalTransition`` if the table does not allow it)."""
        self.state = next_conn_state(self.state, event)
        return self.state

    @property
    def output_closed(self) -> bool:
        return self.close_requested or self.state in OUTPUT_CLOSED

    @property
    def peer_output_closed(self) -> bool:
        return self.state in PEER_OUTPUT_CLOSED

    # -- handshake -------------------------------------------------------------------------------

    def send_syn(self, now: int) -> None:
        cfg = self.config
        syn = Syn(
            self.id,
            self.local_port,
            self.remote_port,
            self.min_fidelity,
            cfg.pair_window,
            cfg.data_window_bytes,
        )
        self._out.append(SendTo(self.remote, syn))
        self.handshake_due = now + self.handshake_rto

    def send_syn_ack(self, now: int) -> None:
        syn_ack = SynAck(self.peer_conn, self.id, self.config.data_window_bytes)
        self._out.append(SendTo(self.remote, syn_ack))
        self.handshake_due = now + self.handshake_rto

    def send_handshake_ack(self, now: int) -> None:
        """The connector's HandshakeAck, repeated until the acceptor's first Ack or record
        confirms it (``confirm_handshake``): the acceptor cannot take records before it, and
        its own SynAck repeats alone would make the handshake fragile on a lossy carrier."""
        assert self.circuit is not None
        head, number = self.circuit
        self._out.append(SendTo(self.remote, HandshakeAck(self.peer_conn, self.id, head, number)))
        if not self.handshake_confirmed:
            self.handshake_due = now + self.handshake_rto

    def confirm_handshake(self) -> None:
        if self.role is Role.CONNECTOR and not self.handshake_confirmed:
            self.handshake_confirmed = True
            self.handshake_due = None
            self.handshake_deadline = None

    def set_peer(self, peer_conn: int, data_window: int) -> None:
        self.peer_conn = peer_conn
        self.sender.dst_conn = peer_conn
        self.sender.data_limit = data_window

    # -- the application -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sender.queue_message(data)

    @property
    def unsent_bytes(self) -> int:
        """Message bytes queued by ``send`` and not yet on the wire (the peer's window is
        full): a driver bounds its application's sends with this."""
        return self.sender.blocked_bytes

    def recv(self) -> None:
        self.recv_wanted += 1
        self.serve_recv()

    def serve_recv(self) -> None:
        while self.recv_wanted and self.complete:
            message = self.complete.popleft()
            self.complete_bytes -= len(message)
            self.recv_wanted -= 1
            self._out.append(Data(self.id, message))
        if self.recv_wanted and self.peer_output_closed:
            self.recv_wanted = 0
            self._out.append(PeerFinished(self.id))

    # -- records from the peer -------------------------------------------------------------------

    def on_record(self, record: RecordMessage) -> bool:
        """Take one record, in order. Returns True if it was the peer's Fin."""
        if isinstance(record, Segment | Teleport | Fin) and self.peer_output_closed:
            raise ProtocolError(f"{record.type_name} after the peer's Fin")
        if isinstance(record, Segment):
            self._on_segment(record)
        elif isinstance(record, Fin):
            if self.partial:
                raise ProtocolError("Fin in the middle of a message")
            self.receiver.ack_now = True  # the peer's close waits on it
            return True
        elif isinstance(record, Window):
            if record.data_limit < self.sender.data_limit:
                raise ProtocolError("a Window took back bytes it granted")
            self.sender.data_limit = record.data_limit
        elif isinstance(record, PairDemand):
            self.pairs.on_demand(
                record.epr_limit, record.measures, record.teleports, self.last_heard_ns
            )
        elif isinstance(record, PairUses):
            self.pairs.on_uses(record.first_index, record.uses)
        elif isinstance(record, PairsEnd):
            self.pairs.on_pairs_end()
        elif isinstance(record, Teleport):
            self.pairs.on_teleport(record.index, record.x, record.z)
        elif isinstance(record, EprRelease):
            self.pairs.on_epr_release(record.taken)
        elif isinstance(record, EprCut):
            self.pairs.on_epr_cut(record.first)
        else:
            raise ProtocolError(f"unknown record {type(record).__name__}")
        return False

    def _on_segment(self, segment: Segment) -> None:
        if segment.last not in (0, 1):
            raise ProtocolError(f"Segment.last must be 0 or 1, got {segment.last}")
        if self.in_bytes + len(segment.payload) > self.granted:
            raise ProtocolError("message bytes beyond the window granted")
        self.in_bytes += len(segment.payload)
        self.partial.append(segment.payload)
        if segment.last:
            message = b"".join(self.partial)
            self.partial.clear()
            self.complete.append(message)
            self.complete_bytes += len(message)
            self.serve_recv()

    # -- output ----------------------------------------------------------------------------------

    def flush(self, now: int) -> None:
        """Queue what the pair stream and flow control owe the peer, put on the wire what
        may go, and acknowledge what arrived."""
        if self.state in HANDSHAKING or self.state is ConnState.CLOSED:
            return
        pairs = self.pairs
        ids = (self.peer_conn, self.id, 0)
        if pairs.uses_out:
            self.sender.queue_control(PairUses(*ids, pairs.uses_first, tuple(pairs.uses_out)))
            pairs.uses_out.clear()
        if pairs.pairs_end_due:
            self.sender.queue_control(PairsEnd(*ids))
            pairs.pairs_end_due = False
        if pairs.epr_cut_due is not None:
            # After the uses of every pair it cuts (above).
            self.sender.queue_control(EprCut(*ids, pairs.epr_cut_due))
            pairs.epr_cut_due = None
        if pairs.epr_release_due:
            # Before the demand that no longer counts the window.
            self.sender.queue_control(EprRelease(*ids, pairs.epr_hold or 0))
            pairs.epr_release_due = False
        if not pairs.allocator and not self.output_closed:
            demand = pairs.demand()
            if demand != self.demand_sent:
                self.sender.queue_control(PairDemand(*ids, *demand))
                self.demand_sent = demand
        for index, x, z in pairs.teleports_out:
            self.sender.queue_control(Teleport(*ids, index, x, z))
        pairs.teleports_out.clear()
        self._grant(ids)
        if self.close_requested and not self.fin_queued and pairs.sending_done:
            self.sender.queue_fin()
            self.fin_queued = pairs.fin_queued = True
        if self.fin_queued and self.peer_output_closed and not pairs.uses_closed:
            # Both Fins are out: every teleport's pair use was given before them, and the
            # epr and measure-directly streams ended before, so only RELEASE can follow.
            pairs.close_uses()
        for record in self.sender.transmit(now):
            self._out.append(SendTo(self.remote, record))
        self.send_ack(now)
        self._pause_or_resume(now)

    def _pause_or_resume(self, now: int) -> None:
        """Allocator: pause the circuit once no end has wanted a pair for ``pause_after_ns``,
        or at once when a teleport-only connection left a pair unused (``PairStream.
        _surplus``); resume at the first demand. Pairs arriving while paused (made before
        the pause landed) are decided as ever: RELEASE, or put to the demand that resumed
        it."""
        # Only a pair left unused since the last look counts (not one while paused).
        surplus, self.pairs.surplus = self.pairs.surplus, False
        if (
            self.role is not Role.ACCEPTOR
            or self.circuit is None
            or self.close_sent
            or self.circuit_ended
        ):
            self.idle_since = None
            return
        if self.pairs.wants_pairs():
            self.idle_since = None
            if self.circuit_paused:
                self.circuit_paused = False
                self._out.append(ResumeCircuit(self.circuit))
        elif not self.circuit_paused:
            if self.idle_since is None:
                self.idle_since = now
            # Teleports taking fewer pairs than the circuit makes pause it at once, rather
            # than free one pair after another until the next send_qubit.
            if surplus or now - self.idle_since >= self.config.pause_after_ns:
                self.circuit_paused = True
                self.idle_since = None
                self._out.append(PauseCircuit(self.circuit))

    def _grant(self, ids: tuple[int, int, int]) -> None:
        if self.peer_output_closed:
            return
        window = self.config.data_window_bytes
        limit = self.in_bytes + max(0, window - self.complete_bytes)
        if limit <= self.granted:
            return
        if limit - self.granted >= max(1, window // 4) or self.in_bytes >= self.granted:
            self.granted = limit
            self.sender.queue_control(Window(*ids, limit))

    def send_ack(self, now: int) -> None:
        receiver = self.receiver
        if not receiver.ack_due:
            return
        if (
            not receiver.ack_now
            and receiver.unacked < self.config.records_per_ack
            and self.config.ack_delay_ns
        ):
            if self.ack_since is None:
                self.ack_since = now
            if now - self.ack_since < self.config.ack_delay_ns:
                return  # (``deadlines`` brings us back)
        self.ack_since = None
        receiver.acked()
        ack = Ack(self.peer_conn, self.id, receiver.next_seq, receiver.selective())
        self._out.append(SendTo(self.remote, ack))

    # -- time ------------------------------------------------------------------------------------

    def on_timer(self, now: int) -> str | None:
        """Retransmit what is due; returns why the connection timed out, if it did."""
        if self.handshake_deadline is not None and self.handshake_deadline <= now:
            return "the handshake got no answer in time"
        if self.sender.given_up(now):
            return f"records to {self.remote} went unacknowledged too long"
        idle = self.config.idle_timeout_ns
        if idle and now - self.last_heard_ns >= idle:
            return f"nothing heard from {self.remote} for {idle} ns"
        if self.handshake_due is not None and self.handshake_due <= now:
            self.handshake_retransmitted = True
            self.handshake_rto = min(2 * self.handshake_rto, self.config.max_rto_ns)
            if self.state is ConnState.SYN_SENT:
                self.send_syn(now)
            elif self.state is ConnState.SYN_RECEIVED:
                self.send_syn_ack(now)
            else:
                self.send_handshake_ack(now)
        for record in self.sender.on_timer(now):
            self._out.append(SendTo(self.remote, record))
        self.pairs.expire(now)
        return None

    def deadlines(self) -> Iterator[int]:
        if self.state is ConnState.TIME_WAIT:
            if self.linger_until is not None:
                yield self.linger_until
            return
        for deadline in (
            self.handshake_deadline,
            self.handshake_due,
            self.sender.deadline(),
            self.sender.give_up_deadline(),
        ):
            if deadline is not None:
                yield deadline
        if self.config.idle_timeout_ns:
            yield self.last_heard_ns + self.config.idle_timeout_ns
        if self.idle_since is not None and self.state is not ConnState.CLOSED:
            yield self.idle_since + self.config.pause_after_ns
        if self.ack_since is not None:
            yield self.ack_since + self.config.ack_delay_ns
        pairs_due = self.pairs.deadline()
        if pairs_due is not None:
            yield pairs_due

    # -- ending ----------------------------------------------------------------------------------

    def settle(self, now: int) -> None:
        """After an input touched the connection: send what it owes, close the circuit when
        it is no longer needed, close when done."""
        if self.state is ConnState.CLOSED:
            return
        self.flush(now)
        if (
            self.role is Role.CONNECTOR
            and not self.close_sent
            and self.pairs.uses_closed
            and not self.sender.waiting
            and not self.pairs.busy
        ):
            # Both Fins are out and ours is acknowledged (so the acceptor has it and will not
            # take the circuit's end for a failure); nothing here waits on a pair, and the
            # acceptor, which holds every pair first, waits on none either.
            self.close_circuit()
            self.pairs.circuit_gone()
        if self.done:
            self.transition(ConnInput.DONE)
            self.pairs.release_all()
            self.linger_until = now + self.config.linger_ns
            self._out.append(Closed(self.id))

    def close_circuit(self) -> None:
        if self.circuit is not None and not self.close_sent and not self.circuit_ended:
            self.close_sent = True
            self._out.append(CloseCircuit(self.circuit))

    @property
    def done(self) -> bool:
        """Both outputs closed, our Fin delivered, nothing owed to the application (unread
        messages included) or waiting on a pair: the connection can close."""
        return (
            self.state is ConnState.CLOSING
            and self.fin_queued
            and (self.peer_gone or not self.sender.waiting)
            and not self.pairs.busy
            and not self.complete
        )

    def held_qubits(self) -> list[int]:
        return self.pairs.held_qubits()


def syn_problem(syn: Syn) -> str | None:
    """What is wrong with a Syn's fields, if anything."""
    if not 1 <= syn.src_port <= 65535 or not 1 <= syn.dst_port <= 65535:
        return "port out of range"
    if syn.src_conn < 1:
        return "connection id must be ≥ 1"
    if not 0.0 <= syn.min_fidelity <= 1.0:
        return "min_fidelity out of [0, 1]"
    if syn.pair_window < 0 or syn.data_window < 0:
        return "negative window"
    return None
