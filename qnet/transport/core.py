"""The transport core: ports, listeners, connections, handshakes, timers and endings.

One per node. Sans-IO: every input takes ``now`` (ns); outputs are queued for ``pop_outputs``;
``next_deadline`` says when ``on_timer`` is due. See the package docstring for the driver
contract and ``states`` for the connection state machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from qnet.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoMemory,
    NotFound,
    ProtocolError,
    QnetError,
    Timeout,
    Unreachable,
)
from qnet.network.circuit_events import CircuitId, CloseCode
from qnet.physical.gates import Basis
from qnet.transport.bindings import CircuitTable, Listener, PortTable, check_port, circuit_error
from qnet.transport.config import TransportConfig
from qnet.transport.connection import Connection, Role, syn_problem
from qnet.transport.events import (
    Ack,
    AddressedMessage,
    CloseCircuit,
    Closed,
    Connected,
    ConnectionAccepted,
    ConnId,
    Error,
    Free,
    HandshakeAck,
    OpenCircuit,
    Output,
    PeerFinished,
    RecordMessage,
    Reset,
    SendTo,
    Syn,
    SynAck,
    TransportMessage,
    error_type,
)
from qnet.transport.pairs import HeldPair
from qnet.transport.states import (
    APP_CALLS,
    AppCall,
    ConnInput,
    ConnState,
    IllegalTransition,
)


class TransportCore:
    def __init__(
        self, node: str, config: TransportConfig | None = None, *, first_conn_id: int = 1
    ) -> None:
        """``first_conn_id``: a node that restarts should start above the ids it used before
        (e.g. from the clock), so its peers cannot mistake a new connection for an old one."""
        self.node = node
        self.config = config or TransportConfig()
        self.config.check()
        self._conns: dict[ConnId, Connection] = {}
        #: (remote node, its connection id) → ours.
        self._by_peer: dict[tuple[str, int], ConnId] = {}
        self._ports = PortTable(node)
        self._circuits = CircuitTable(self.config.orphan_timeout_ns)
        #: Tags of measurements whose answers go to a connection's pair stream.
        self._measure_tags: dict[int, ConnId] = {}
        self._next_conn = first_conn_id
        self._next_tag = 1
        self._out: list[Output] = []
        self._dirty: dict[ConnId, Connection] = {}
        self.counters: dict[str, int] = {
            "refused": 0,
            "duplicates": 0,
            "early_records": 0,
            "unknown_connection": 0,
            "late_results": 0,
            "orphan_pairs_freed": 0,
        }

    # -- the application -------------------------------------------------------------------------

    def listen(self, port: int, now: int, *, backlog: int | None = None) -> None:
        self._ports.listen(port, backlog or self.config.backlog)

    def unlisten(self, port: int, now: int) -> None:
        """Stop listening; connections not yet accepted are refused (the application's pending
        ``accept`` calls are the driver's to end)."""
        listener = self._ports.listener(port)
        del self._ports.listeners[port]
        for conn_id in [*listener.handshaking, *listener.ready]:
            conn = self._conns.get(conn_id)
            if conn is not None:
                self._end(conn, NotFound, f"port {port} stopped listening", now)
        self._settle(now)

    def accept(self, port: int, now: int) -> None:
        """Ask for the next connection to ``port`` (answered by ``ConnectionAccepted``)."""
        listener = self._ports.listener(port)
        listener.accept_wanted += 1
        self._serve_accepts(listener)

    def connect(
        self,
        remote: str,
        remote_port: int,
        now: int,
        *,
        min_fidelity: float = 0.0,
        local_port: int | None = None,
    ) -> ConnId:
        """Start a connection; answered by ``Connected`` or ``Error``."""
        if not isinstance(remote, str) or not remote or remote == self.node:
            raise InvalidArgument(f"cannot connect {self.node} to {remote!r}", node=self.node)
        check_port(remote_port)
        if not isinstance(min_fidelity, int | float) or not 0.0 <= min_fidelity <= 1.0:
            raise InvalidArgument(f"min_fidelity must be in [0, 1], got {min_fidelity!r}")
        if local_port is None:
            local_port = self._ports.ephemeral({c.local_port for c in self._conns.values()})
        else:
            check_port(local_port)
            if local_port in self._ports.listeners or any(
                (c.local_port, c.remote, c.remote_port) == (local_port, remote, remote_port)
                for c in self._conns.values()
            ):
                raise AlreadyExists(f"port {local_port} is in use", node=self.node)
        conn = self._new_connection(
            Role.CONNECTOR, local_port, remote, remote_port, float(min_fidelity), 0, 0, now
        )
        conn.send_syn(now)
        return conn.id

    def send(self, conn_id: ConnId, data: bytes, now: int) -> None:
        """Queue one classical message (any size); it arrives whole, in order, once."""
        if not isinstance(data, bytes):
            raise InvalidArgument(f"a message is bytes, not {type(data).__name__}")
        self._app_conn(conn_id, AppCall.SEND).send(data)
        self._settle(now)

    def recv(self, conn_id: ConnId, now: int) -> None:
        """Ask for the next message (``Data``, or ``PeerFinished`` at the end)."""
        self._app_conn(conn_id, AppCall.RECV).recv()
        self._settle(now)

    def epr(self, conn_id: ConnId, now: int) -> None:
        """Ask for the next pair of the epr stream (``EprPair``, or ``PairsEnded``)."""
        self._app_conn(conn_id, AppCall.EPR).pairs.want_epr(now)
        self._settle(now)

    def epr_measure(self, conn_id: ConnId, count: int, basis: Basis, now: int) -> None:
        """Ask for ``count`` pairs measured in ``basis`` on arrival (``MeasuredPair`` each)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgument(f"count must be an integer ≥ 1, got {count!r}")
        if not isinstance(basis, Basis):
            raise InvalidArgument(f"basis must be a Basis, got {basis!r}")
        self._app_conn(conn_id, AppCall.EPR_MEASURE).pairs.want_measures(count, basis)
        self._settle(now)

    def send_qubit(self, conn_id: ConnId, qubit: int, now: int) -> None:
        """Teleport ``qubit`` (``QubitSent`` once it went, or back in ``Error``)."""
        conn = self._app_conn(conn_id, AppCall.SEND_QUBIT)
        if qubit in self.held_qubits():
            raise InvalidArgument(f"qubit {qubit} is already in the transport's hands")
        conn.pairs.send_qubit(qubit, now)
        self._settle(now)

    def close(self, conn_id: ConnId, now: int) -> None:
        """Close this end's output (half-close; ``Closed`` once both ends are done). Before
        the connection is established, abandon it (``Closed`` at once)."""
        conn = self._app_conn(conn_id, AppCall.CLOSE)
        if conn.state in (ConnState.SYN_SENT, ConnState.CIRCUIT_WAIT):
            reason = "closed before it was established"
            self._end(conn, Unreachable, reason, now, report=False)
            self._out.append(Closed(conn.id))
        else:
            conn.transition(ConnInput.CLOSE)
            conn.close_requested = True
            conn.pairs.end()
            self._dirty[conn.id] = conn
        self._settle(now)

    def abort(self, conn_id: ConnId, now: int) -> tuple[int, ...]:
        """End the connection at once (the peer gets Unreachable); returns the qubits passed to
        ``send_qubit`` that were never touched. No event follows."""
        conn = self._conns.get(conn_id)
        if conn is None or not conn.accepted:
            raise NotFound(f"no connection {conn_id}", node=self.node)
        reason = "connection aborted by its application"
        returned = self._end(conn, Unreachable, reason, now, report=False)
        self._settle(now)
        return returned

    # -- the peer --------------------------------------------------------------------------------

    def on_message(self, sender: str, message: TransportMessage, now: int) -> None:
        self.on_messages(sender, (message,), now)

    def on_messages(self, sender: str, messages: Iterable[TransportMessage], now: int) -> None:
        """Messages from ``sender``'s transport core. A message illegal for its connection's
        state resets that connection and raises ProtocolError after every message was taken
        (flush the outputs anyway)."""
        first_error: ProtocolError | None = None
        for message in messages:
            try:
                self._dispatch(sender, message, now)
            except ProtocolError as exc:
                first_error = first_error or exc
        self._settle(now)
        if first_error is not None:
            raise first_error

    def _dispatch(self, sender: str, message: TransportMessage, now: int) -> None:
        if isinstance(message, Syn):
            self._on_syn(sender, message, now)
            return
        if not isinstance(message, AddressedMessage):
            raise ProtocolError(f"{type(message).__name__} is not a transport message")
        conn = self._conns.get(message.dst_conn)
        if (
            conn is None
            or conn.remote != sender
            or (conn.peer_conn and conn.peer_conn != message.src_conn)
        ):
            self.counters["unknown_connection"] += 1
            if not isinstance(message, Reset):
                # It ended here (or never was): to the sender's application the other end is
                # gone, as for any connection whose peer went away.
                reason = f"{self.node} has no connection {message.dst_conn} (it ended there)"
                reset = Reset(message.src_conn, message.dst_conn, "Unreachable", self.node, reason)
                self._out.append(SendTo(sender, reset))
            return
        conn.last_heard_ns = now
        self._dirty[conn.id] = conn
        try:
            self._on_conn_message(conn, message, now)
        except (ProtocolError, IllegalTransition) as exc:
            reason = f"{message.type_name} from {sender}: {exc}"
            self._end(conn, ProtocolError, reason, now)
            raise ProtocolError(reason, node=self.node) from None

    def _on_conn_message(self, conn: Connection, message: AddressedMessage, now: int) -> None:
        if isinstance(message, Reset):
            self._on_reset(conn, message, now)
        elif isinstance(message, SynAck):
            self._on_syn_ack(conn, message, now)
        elif isinstance(message, HandshakeAck):
            self._on_handshake_ack(conn, message, now)
        elif isinstance(message, Ack):
            conn.transition(ConnInput.RECORD)
            conn.confirm_handshake()
            for record in conn.sender.on_ack(message.next_seq, message.selective, now):
                self._out.append(SendTo(conn.remote, record))
        elif isinstance(message, RecordMessage):
            if conn.transition(ConnInput.RECORD) is ConnState.SYN_RECEIVED:
                self.counters["early_records"] += 1  # unacknowledged: the peer resends it
                return
            conn.confirm_handshake()
            for record in conn.receiver.accept(message):
                if conn.on_record(record):
                    self._on_peer_fin(conn)
        else:
            raise ProtocolError(f"unknown transport message {type(message).__name__}")

    def _on_syn(self, sender: str, syn: Syn, now: int) -> None:
        known = self._by_peer.get((sender, syn.src_conn))
        if known is not None:
            conn = self._conns[known]
            if conn.state is ConnState.SYN_RECEIVED:
                conn.send_syn_ack(now)  # our SynAck was lost
            else:
                self.counters["duplicates"] += 1
            return
        listener = self._ports.listeners.get(syn.dst_port)
        problem = syn_problem(syn)
        if problem is not None:
            self._refuse(sender, syn, InvalidArgument, problem)
            raise ProtocolError(f"Syn from {sender}: {problem}", node=self.node)
        if listener is None:
            self._refuse(sender, syn, NotFound, f"nothing listens on port {syn.dst_port}")
            return
        if listener.full:
            self._refuse(sender, syn, NoMemory, f"port {syn.dst_port}'s backlog is full")
            return
        conn = self._new_connection(
            Role.ACCEPTOR,
            syn.dst_port,
            sender,
            syn.src_port,
            syn.min_fidelity,
            syn.src_conn,
            syn.pair_window,
            now,
        )
        conn.sender.data_limit = syn.data_window
        conn.listener_port = syn.dst_port
        listener.handshaking.add(conn.id)
        conn.send_syn_ack(now)

    def _refuse(self, sender: str, syn: Syn, error: type[QnetError], reason: str) -> None:
        self.counters["refused"] += 1
        reset = Reset(syn.src_conn, 0, error.__name__, self.node, reason)
        self._out.append(SendTo(sender, reset))

    def _on_syn_ack(self, conn: Connection, message: SynAck, now: int) -> None:
        if conn.role is not Role.CONNECTOR:
            raise ProtocolError("SynAck to the accepting end")
        before = conn.state
        conn.transition(ConnInput.SYN_ACK)
        if before is ConnState.SYN_SENT:
            if message.data_window < 0:
                raise ProtocolError("negative data window")
            conn.set_peer(message.src_conn, message.data_window)
            self._by_peer[(conn.remote, message.src_conn)] = conn.id
            if not conn.handshake_retransmitted:
                conn.sender.rtt.sample(now - conn.handshake_sent_ns)
            conn.handshake_due = None
            self._out.append(OpenCircuit(conn.id, conn.remote, conn.min_fidelity))
        elif before is not ConnState.CIRCUIT_WAIT:
            conn.send_handshake_ack(now)  # our HandshakeAck was lost
        else:
            self.counters["duplicates"] += 1

    def _on_handshake_ack(self, conn: Connection, message: HandshakeAck, now: int) -> None:
        if conn.role is not Role.ACCEPTOR:
            raise ProtocolError("HandshakeAck to the connecting end")
        circuit = (message.circuit_head, message.circuit_number)
        if message.circuit_head != conn.remote:
            raise ProtocolError(f"circuit {circuit} was not opened by {conn.remote}")
        before = conn.state
        conn.transition(ConnInput.HANDSHAKE_ACK)
        conn.receiver.ack_due = conn.receiver.ack_now = True  # the connector repeats it until then
        if before is not ConnState.SYN_RECEIVED:
            if conn.circuit != circuit:
                raise ProtocolError(f"HandshakeAck names circuit {circuit}, not {conn.circuit}")
            self.counters["duplicates"] += 1
            return
        if self._circuits.conn_of(circuit) is not None:
            raise ProtocolError(f"circuit {circuit} already carries another connection")
        if not conn.handshake_retransmitted:
            conn.sender.rtt.sample(now - conn.handshake_sent_ns)
        self._bind(conn, circuit)
        listener = self._ports.listeners[conn.listener_port or 0]
        listener.handshaking.discard(conn.id)
        listener.ready.append(conn.id)
        self._serve_accepts(listener)

    def _on_reset(self, conn: Connection, reset: Reset, now: int) -> None:
        if conn.state in (ConnState.CLOSING, ConnState.TIME_WAIT) and not conn.pairs.busy:
            # The peer finished and forgot the connection; our last acknowledgement was lost.
            conn.transition(ConnInput.PEER_GONE)
            conn.peer_gone = True
            conn.sender.abandon()
            return
        self._end(conn, error_type(reset.error), reset.reason, now, node=reset.node, notify=False)

    def _on_peer_fin(self, conn: Connection) -> None:
        conn.transition(ConnInput.PEER_FIN)
        conn.pairs.end()
        if conn.recv_wanted:
            conn.serve_recv()  # answers the calls no message is left for with PeerFinished
        else:
            self._out.append(PeerFinished(conn.id))

    # -- the network layer -----------------------------------------------------------------------

    def on_circuit_open(self, conn_id: ConnId, circuit: CircuitId, now: int) -> None:
        """The circuit an ``OpenCircuit`` asked for is open (every hop accepted)."""
        conn = self._conns.get(conn_id)
        if conn is None:
            self._out.append(CloseCircuit(circuit))  # the connection ended meanwhile
            return
        if self._circuits.conn_of(circuit) is not None:
            raise ProtocolError(f"circuit {circuit} already carries a connection", node=self.node)
        self._driver_transition(conn, ConnInput.CIRCUIT_OPEN)
        self._bind(conn, circuit)
        # Repeated until the acceptor answers (its Ack), within a fresh handshake timeout.
        conn.handshake_deadline = now + self.config.handshake_timeout_ns
        conn.send_handshake_ack(now)
        self._out.append(Connected(conn.id, conn.local_port, conn.remote, conn.remote_port))
        self._dirty[conn.id] = conn
        self._settle(now)

    def on_circuit_failed(
        self, conn_id: ConnId, code: CloseCode, reason: str, now: int, *, node: str | None = None
    ) -> None:
        """The circuit an ``OpenCircuit`` asked for could not be opened."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return  # the connection ended meanwhile
        self._driver_transition(conn, ConnInput.CIRCUIT_FAILED)
        self._end(conn, circuit_error(code), f"no circuit: {reason}", now, node=node)
        self._settle(now)

    def on_circuit_closed(
        self,
        circuit: CircuitId,
        code: CloseCode,
        reason: str,
        now: int,
        *,
        node: str | None = None,
    ) -> None:
        """A circuit ended (at either end; also after our own ``CloseCircuit``)."""
        self._free(self._circuits.closed(circuit))
        conn_id = self._circuits.conn_of(circuit)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is None:
            return
        conn.circuit_ended = True
        if conn.state in (ConnState.CLOSING, ConnState.TIME_WAIT) and not conn.pairs.busy:
            conn.transition(ConnInput.CIRCUIT_ENDED)
            conn.pairs.circuit_gone()
            self._dirty[conn.id] = conn
        else:
            error = circuit_error(code)
            self._end(conn, error, f"circuit {circuit} ended: {reason}", now, node=node)
        self._settle(now)

    def on_pair(
        self, circuit: CircuitId, index: int, qubit: int, fidelity: float, now: int
    ) -> None:
        """End-to-end pair ``index`` of ``circuit`` (corrected to Φ+); its qubit is ours now."""
        conn_id = self._circuits.conn_of(circuit)
        if conn_id is None:
            if not self._circuits.park(circuit, HeldPair(index, qubit, fidelity, now), now):
                self._free((qubit,))
            return
        conn = self._conns[conn_id]
        self._dirty[conn.id] = conn
        try:
            conn.pairs.on_pair(HeldPair(index, qubit, fidelity, now))
        finally:
            self._settle(now)

    # -- the physical layer ----------------------------------------------------------------------

    def on_measured(self, tag: int, outcomes: tuple[int, ...], now: int) -> None:
        """Answer to a ``BellMeasure`` or ``MeasurePair``: its outcomes, or () if it failed."""
        conn_id = self._measure_tags.pop(tag, None)
        if conn_id is None:
            raise InvalidArgument(f"no measurement is waiting for tag {tag}", node=self.node)
        conn = self._conns.get(conn_id)
        if conn is None or tag not in conn.pairs.tags:
            self.counters["late_results"] += 1  # its connection ended meanwhile
            return
        conn.pairs.on_measured(tag, tuple(outcomes))
        self._dirty[conn.id] = conn
        self._settle(now)

    # -- time ------------------------------------------------------------------------------------

    def on_timer(self, now: int) -> None:
        for conn in list(self._conns.values()):
            self._conn_timers(conn, now)
        for circuit, qubits in self._circuits.expire(now):
            self.counters["orphan_pairs_freed"] += len(qubits)
            self._free(qubits)
            self._out.append(CloseCircuit(circuit))
        self._settle(now)

    def _conn_timers(self, conn: Connection, now: int) -> None:
        if conn.state is ConnState.TIME_WAIT:
            if conn.linger_until is not None and conn.linger_until <= now:
                conn.transition(ConnInput.LINGER_END)
                self._forget(conn)
            return
        timeout = conn.on_timer(now)
        if timeout is not None:
            self._end(conn, Timeout, timeout, now)
        else:
            # Its settle pauses the circuit when idle, and sends what expiring ready pairs
            # owe the peer.
            self._dirty[conn.id] = conn

    def next_deadline(self) -> int | None:
        return min(self._deadlines(), default=None)

    def _deadlines(self) -> Iterator[int]:
        for conn in self._conns.values():
            yield from conn.deadlines()
        yield from self._circuits.deadlines()

    def pop_outputs(self) -> list[Output]:
        # Emptied in place: every connection and pair stream appends to this same list.
        out = list(self._out)
        self._out.clear()
        return out

    # -- inspection ------------------------------------------------------------------------------

    def connections(self) -> dict[ConnId, ConnState]:
        return {c.id: c.state for c in self._conns.values()}

    def connection(self, conn_id: ConnId) -> Connection:
        try:
            return self._conns[conn_id]
        except KeyError:
            raise NotFound(f"no connection {conn_id}", node=self.node) from None

    def held_qubits(self) -> list[int]:
        """Every qubit the core is responsible for: pairs it holds, qubits waiting to be
        teleported, orphan pairs."""
        held = [q for c in self._conns.values() for q in c.held_qubits()]
        held += self._circuits.held_qubits()
        return held

    def held_count(self) -> int:
        """How many qubits ``held_qubits`` lists (the node counts them against memory)."""
        return len(self.held_qubits())

    # -- helpers ---------------------------------------------------------------------------------

    def _new_connection(
        self,
        role: Role,
        local_port: int,
        remote: str,
        remote_port: int,
        min_fidelity: float,
        peer_conn: int,
        peer_pair_window: int,
        now: int,
    ) -> Connection:
        conn_id = self._next_conn
        self._next_conn += 1
        conn = Connection(
            conn_id,
            role,
            local_port=local_port,
            remote=remote,
            remote_port=remote_port,
            min_fidelity=min_fidelity,
            peer_conn=peer_conn,
            peer_pair_window=peer_pair_window,
            config=self.config,
            out=self._out,
            new_tag=self._tag,
            new_measure_tag=self._measure_tag,
            now=now,
        )
        self._conns[conn_id] = conn
        if peer_conn:
            self._by_peer[(remote, peer_conn)] = conn_id
        return conn

    def _app_conn(self, conn_id: ConnId, call: AppCall) -> Connection:
        conn = self._conns.get(conn_id)
        if conn is None or not conn.accepted:
            raise NotFound(f"no connection {conn_id}", node=self.node)
        if conn.state not in APP_CALLS[call]:
            raise FailedPrecondition(
                f"{call.value} on connection {conn_id} in state {conn.state.value}", node=self.node
            )
        self._dirty[conn.id] = conn
        return conn

    def _driver_transition(self, conn: Connection, event: ConnInput) -> None:
        """A transition the driver asked for; one the table refuses is the driver's bug."""
        try:
            conn.transition(event)
        except IllegalTransition as exc:
            raise ProtocolError(f"connection {conn.id}: {exc}", node=self.node) from None

    def _bind(self, conn: Connection, circuit: CircuitId) -> None:
        conn.circuit = circuit
        conn.handshake_deadline = None
        conn.handshake_due = None
        for pair in self._circuits.bind(circuit, conn.id):
            conn.pairs.on_pair(pair)
        self._dirty[conn.id] = conn

    def _serve_accepts(self, listener: Listener) -> None:
        while listener.accept_wanted and listener.ready:
            conn = self._conns[listener.ready.popleft()]
            listener.accept_wanted -= 1
            conn.accepted = True
            self._out.append(
                ConnectionAccepted(listener.port, conn.id, conn.remote, conn.remote_port)
            )

    def _end(
        self,
        conn: Connection,
        error: type[QnetError],
        reason: str,
        now: int,
        *,
        node: str | None = None,
        notify: bool = True,
        report: bool = True,
    ) -> tuple[int, ...]:
        """Fail ``conn``: free what it holds, tell the peer (``notify``) and the application
        (``report``: ``Error``, if it knows the connection), close its circuit. Returns the
        qubits given back to the application."""
        node = node or self.node
        if conn.state is not ConnState.CLOSED:  # CIRCUIT_FAILED already closed it
            conn.transition(ConnInput.FAIL)
        returned, lost = conn.pairs.release_all()
        if notify and conn.peer_conn:
            reset = Reset(conn.peer_conn, conn.id, error.__name__, node, reason)
            self._out.append(SendTo(conn.remote, reset))
        self._forget(conn)
        if report and conn.accepted:
            self._out.append(Error(conn.id, error, node, reason, returned, lost))
        return returned

    def _forget(self, conn: Connection) -> None:
        self._conns.pop(conn.id, None)
        self._dirty.pop(conn.id, None)
        self._by_peer.pop((conn.remote, conn.peer_conn), None)
        if conn.circuit is not None:
            conn.close_circuit()
            self._circuits.unbind(conn.circuit, still_open=not conn.circuit_ended)
        listener = self._ports.listeners.get(conn.listener_port or 0)
        if listener is not None:
            listener.forget(conn.id)
        conn.pairs.release_all()

    def _settle(self, now: int) -> None:
        """After every input: each connection it touched sends what it owes, closes its
        circuit when it no longer needs it, and closes when it is done."""
        while self._dirty:
            _, conn = self._dirty.popitem()
            conn.settle(now)

    def _free(self, qubits: tuple[int, ...]) -> None:
        if qubits:
            self._out.append(Free(self._tag(), qubits))

    def _tag(self) -> int:
        tag = self._next_tag
        self._next_tag += 1
        return tag

    def _measure_tag(self, conn_id: ConnId) -> int:
        tag = self._tag()
        self._measure_tags[tag] = conn_id
        return tag
