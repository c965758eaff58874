"""Connection set-up: handshake, refusals, lost handshake messages, circuit binding, timeouts."""

from __future__ import annotations

import pytest

from qnet.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoMemory,
    NotFound,
    Timeout,
    Unsupported,
)
from qnet.network.circuit_events import CloseCode
from qnet.transport.events import (
    CloseCircuit,
    Closed,
    Connected,
    ConnectionAccepted,
    Data,
    EprPair,
    Error,
    HandshakeAck,
    OpenCircuit,
    PairUses,
    Reset,
    Syn,
    SynAck,
)
from qnet.transport.states import ConnState
from tests.transport.harness import CONFIG, MS, A, B, Faults, Net, established


def test_connect_accept_binds_the_connectors_circuit() -> None:
    net = Net(seed=1)
    a, b = established(net)
    assert net.of(A, Connected) == [Connected(a, 49152, B, 7)]
    assert net.of(B, ConnectionAccepted) == [ConnectionAccepted(7, b, A, 49152)]
    # The connector opened the circuit after the SynAck, and named it in the HandshakeAck.
    kinds = [type(m) for m in net.sent[A]]
    assert kinds[:2] == [Syn, HandshakeAck]
    assert [type(m) for m in net.sent[B]][:1] == [SynAck]
    opened = [c for c in net.commands[A] if isinstance(c, OpenCircuit)]
    assert opened == [OpenCircuit(a, B, 0.0)]
    ack = next(m for m in net.sent[A] if isinstance(m, HandshakeAck))
    assert (ack.circuit_head, ack.circuit_number) in net.circuits
    assert net.cores[A].connection(a).circuit == net.cores[B].connection(b).circuit
    assert net.cores[A].connections() == {a: ConnState.ESTABLISHED}
    assert net.cores[B].connections() == {b: ConnState.ESTABLISHED}
    assert net.protocol_errors == []


def test_pairs_before_the_handshake_ack_wait_for_it() -> None:
    # The HandshakeAck takes 20 ms; pairs reach the acceptor every 2 ms before that.
    net = Net(seed=2, faults=Faults(delay_ns=20 * MS))
    a, b = established(net)
    net.do(A, lambda core, now: core.epr(a, now))
    net.do(B, lambda core, now: core.epr(b, now))
    net.run(100 * MS)
    # Pair 0 arrived at the acceptor before its connection knew the circuit; it was kept and
    # decided first (an epr pair once the connector's demand came, else released).
    assert net.of(B, ConnectionAccepted)
    first = next(m for m in net.sent[B] if isinstance(m, PairUses))
    assert first.first_index == 0
    got_a, got_b = net.of(A, EprPair), net.of(B, EprPair)
    assert len(got_a) == 1
    assert [e.index for e in got_a] == [e.index for e in got_b]
    net.check_ledger()


def test_no_listener_is_refused_with_not_found() -> None:
    net = Net(seed=3)
    a = net.do(A, lambda core, now: core.connect(B, 9, now))
    net.run(50 * MS)
    [error] = net.of(A, Error)
    assert error.conn == a
    assert error.error is NotFound
    assert error.node == B
    assert "port 9" in error.reason
    assert isinstance(error.exception(), NotFound)
    assert net.cores[A].connections() == {}
    assert net.cores[B].connections() == {}
    assert not any(isinstance(c, OpenCircuit) for c in net.commands[A])
    assert net.cores[B].counters["refused"] == 1


def test_full_backlog_is_refused_with_no_memory() -> None:
    net = Net(seed=4)
    net.do(B, lambda core, now: core.listen(7, now, backlog=1))
    first = net.do(A, lambda core, now: core.connect(B, 7, now))
    second = net.do(A, lambda core, now: core.connect(B, 7, now))
    net.run(50 * MS)
    assert [e.conn for e in net.of(A, Connected)] == [first]
    [error] = net.of(A, Error)
    assert error.conn == second
    assert error.error is NoMemory


def test_lost_handshake_messages_are_retransmitted() -> None:
    net = Net(seed=5, faults=Faults(loss=0.5, duplicate=0.3, jitter_ns=5 * MS))
    a, b = established(net)
    net.do(A, lambda core, now: core.send(a, b"after a lossy handshake", now))
    net.do(B, lambda core, now: core.recv(b, now))
    net.run_until(lambda: bool(net.of(B, Data)))
    assert net.of(B, Data)[0].data == b"after a lossy handshake"
    assert net.protocol_errors == []


def test_handshake_times_out_when_nothing_gets_through() -> None:
    net = Net(seed=6, faults=Faults(loss=1.0))
    net.do(B, lambda core, now: core.listen(7, now))
    a = net.do(A, lambda core, now: core.connect(B, 7, now))
    net.run(CONFIG.handshake_timeout_ns + 10 * MS)
    [error] = net.of(A, Error)
    assert error.conn == a
    assert error.error is Timeout
    assert error.node == A
    assert net.now >= CONFIG.handshake_timeout_ns
    syns = [m for m in net.sent[A] if isinstance(m, Syn)]
    assert len(syns) > 3  # retransmitted with back-off, not once per RTO forever
    assert len(syns) < 20
    assert net.cores[A].next_deadline() is None


def test_acceptor_times_out_a_connection_whose_handshake_ack_never_comes() -> None:
    net = Net(seed=7)
    net.do(B, lambda core, now: core.listen(7, now))
    net.do(B, lambda core, now: core.accept(7, now))
    net.do(A, lambda core, now: core.connect(B, 7, now))
    net.run(2 * MS)  # the Syn is across
    net.faults.loss = 1.0
    net.run(CONFIG.handshake_timeout_ns + 100 * MS)
    # The application never saw it: no event; the connection is gone.
    assert net.of(B, ConnectionAccepted) == []
    assert net.of(B, Error) == []
    assert net.cores[B].connections() == {}


def test_circuit_failure_fails_the_connect_and_resets_the_acceptor() -> None:
    net = Net(seed=8, circuit_failure=CloseCode.UNSUPPORTED)
    net.do(B, lambda core, now: core.listen(7, now))
    net.do(B, lambda core, now: core.accept(7, now))
    a = net.do(A, lambda core, now: core.connect(B, 7, now, min_fidelity=0.99))
    net.run(50 * MS)
    [error] = net.of(A, Error)
    assert error.conn == a
    assert error.error is Unsupported
    assert any(isinstance(m, Reset) for m in net.sent[A])
    assert net.cores[A].connections() == {}
    assert net.cores[B].connections() == {}
    assert net.of(B, ConnectionAccepted) == []


def test_circuit_opening_after_the_connection_ended_is_closed() -> None:
    net = Net(seed=9, circuit_setup_ns=CONFIG.handshake_timeout_ns + 50 * MS)
    net.do(B, lambda core, now: core.listen(7, now))
    a = net.do(A, lambda core, now: core.connect(B, 7, now))
    net.run(CONFIG.handshake_timeout_ns + 100 * MS)
    assert [e.error for e in net.of(A, Error) if e.conn == a] == [Timeout]
    [(cid, circuit)] = net.circuits.items()
    assert CloseCircuit(cid) in net.commands[A]
    assert not circuit.open


def test_close_before_established_abandons() -> None:
    net = Net(seed=10)
    net.do(B, lambda core, now: core.listen(7, now))
    a = net.do(A, lambda core, now: core.connect(B, 7, now))
    net.do(A, lambda core, now: core.close(a, now))
    assert net.of(A, Closed) == [Closed(a)]
    net.run(CONFIG.handshake_timeout_ns + 100 * MS)
    assert net.cores[A].connections() == {}
    assert net.cores[B].connections() == {}
    assert net.of(A, Error) == []


def test_unlisten_refuses_connections_not_accepted() -> None:
    net = Net(seed=11)
    a, _ = established(net, accept=False)
    net.do(B, lambda core, now: core.unlisten(7, now))
    net.run(20 * MS)
    [error] = net.of(A, Error)
    assert error.conn == a
    assert error.error is NotFound
    assert net.cores[B].connections() == {}
    net.run(100 * MS)
    net.check_ledger()


def test_application_calls_are_checked() -> None:
    net = Net(seed=12)
    core = net.cores[A]
    with pytest.raises(InvalidArgument):
        core.connect(A, 7, 0)
    with pytest.raises(InvalidArgument):
        core.connect(B, 0, 0)
    with pytest.raises(InvalidArgument):
        core.connect(B, 7, 0, min_fidelity=1.5)
    with pytest.raises(NotFound):
        core.send(42, b"x", 0)
    with pytest.raises(NotFound):
        core.accept(7, 0)
    core.listen(7, 0)
    with pytest.raises(AlreadyExists):
        core.listen(7, 0)
    with pytest.raises(AlreadyExists):
        core.connect(B, 7, 0, local_port=7)
    a = core.connect(B, 7, 0)
    with pytest.raises(FailedPrecondition):
        core.send(a, b"not connected yet", 0)
    a2, b2 = established(Net(seed=13))
    del a2, b2


def test_ephemeral_ports_are_distinct() -> None:
    net = Net(seed=14)
    net.do(B, lambda core, now: core.listen(7, now))
    conns = [net.do(A, lambda core, now: core.connect(B, 7, now)) for _ in range(5)]
    ports = {net.cores[A].connection(c).local_port for c in conns}
    assert len(ports) == 5
