"""Classical messages: intact and in order over a faulty carrier, flow control, half-close,
closing, and timeouts."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.errors import FailedPrecondition, Timeout, Unreachable
from qnet.network.circuit_events import CloseCode
from qnet.transport.events import (
    Ack,
    CloseCircuit,
    Closed,
    Data,
    Error,
    Fin,
    PeerFinished,
    Reset,
    Segment,
    Window,
)
from qnet.transport.states import ConnState
from tests.transport.harness import CONFIG, MS, A, B, Faults, Net, call, established


def _exchange(net: Net, a: int, b: int, messages: list[bytes], *, reader: str = B) -> list[bytes]:
    """Send ``messages`` the other way from ``reader``, read them all; what arrived."""
    writer, w_conn, r_conn = (A, a, b) if reader == B else (B, b, a)
    for m in messages:
        net.do(writer, call("send", w_conn, m))
    for _ in messages:
        net.do(reader, lambda core, now: core.recv(r_conn, now))
    net.run_until(lambda: len(net.of(reader, Data)) >= len(messages))
    return [e.data for e in net.of(reader, Data)]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate=st.sampled_from([0.0, 0.2]),
    jitter_ms=st.sampled_from([0, 3, 10]),
    seed=st.integers(0, 2**16),
)
def test_messages_arrive_whole_in_order_once(
    sizes: list[int], loss: float, duplicate: float, jitter_ms: int, seed: int
) -> None:
    faults = Faults(loss=loss, duplicate=duplicate, jitter_ns=jitter_ms * MS)
    net = Net(seed=seed, faults=faults)
    a, b = established(net)
    messages = [bytes((seed + i + j) % 256 for j in range(n)) for i, n in enumerate(sizes)]
    assert _exchange(net, a, b, messages) == messages
    # And the other way, on the same connection.
    assert _exchange(net, a, b, messages[::-1], reader=A) == messages[::-1]
    assert net.protocol_errors == []
    net.check_ledger()


def test_segments_respect_the_window_and_a_big_message_still_passes() -> None:
    net = Net(seed=1)
    a, b = established(net)
    big = bytes(range(256)) * 40  # 10 kB, over twice the 4 kB window
    net.do(A, lambda core, now: core.send(a, big, now))
    net.run(200 * MS)
    sent = sum(len(m.payload) for m in net.sent[A] if isinstance(m, Segment))
    assert sent == len(big)  # a message larger than the window is not stuck
    assert max(len(m.payload) for m in net.sent[A] if isinstance(m, Segment)) <= 512
    net.do(B, lambda core, now: core.recv(b, now))
    assert net.of(B, Data) == [Data(b, big)]


def test_unread_messages_stop_the_sender_until_read() -> None:
    net = Net(seed=2)
    a, b = established(net)
    for i in range(20):
        net.do(A, call("send", a, bytes([i]) * 1000))
    net.run(500 * MS)
    sent = sum(len(m.payload) for m in net.sent[A] if isinstance(m, Segment))
    # Complete, unread messages fill B's 4 kB window; A sends no more than that (+1 message).
    assert 4000 <= sent <= CONFIG.data_window_bytes + 1000
    assert net.cores[A].connection(a).sender.blocked_bytes == 20_000 - sent
    for _ in range(20):
        net.do(B, lambda core, now: core.recv(b, now))
    net.run(500 * MS)
    assert [e.data for e in net.of(B, Data)] == [bytes([i]) * 1000 for i in range(20)]
    assert any(isinstance(m, Window) for m in net.sent[B])


def test_half_close_keeps_the_other_direction_open() -> None:
    net = Net(seed=3, faults=Faults(loss=0.2, jitter_ns=2 * MS))
    a, b = established(net)
    net.do(A, lambda core, now: core.send(a, b"last words", now))
    net.do(A, lambda core, now: core.close(a, now))
    net.do(B, lambda core, now: core.recv(b, now))
    net.do(B, lambda core, now: core.recv(b, now))
    net.run_until(lambda: bool(net.of(B, PeerFinished)))
    assert net.of(B, Data) == [Data(b, b"last words")]
    assert net.cores[B].connection(b).state is ConnState.CLOSE_WAIT
    assert net.cores[A].connection(a).state is ConnState.FIN_WAIT
    # B still sends; A still reads.
    assert _exchange(net, a, b, [b"still here", b"and here"], reader=A) == [
        b"still here",
        b"and here",
    ]
    net.do(B, lambda core, now: core.close(b, now))
    net.run_until(lambda: bool(net.of(A, Closed)) and bool(net.of(B, Closed)))
    # Both ends closed cleanly; the connector closed the circuit.
    assert any(isinstance(c, CloseCircuit) for c in net.commands[A])
    assert not any(isinstance(c, CloseCircuit) for c in net.commands[B])
    assert net.of(A, Error) == []
    assert net.of(B, Error) == []
    net.run(CONFIG.linger_ns + 10 * MS)
    assert net.cores[A].connections() == {}
    assert net.cores[B].connections() == {}
    assert net.cores[A].next_deadline() is None
    assert net.cores[B].next_deadline() is None
    net.check_ledger()
    assert net.protocol_errors == []


def test_after_close_sending_is_refused_and_recv_ends() -> None:
    net = Net(seed=4)
    a, b = established(net)
    net.do(A, lambda core, now: core.close(a, now))
    net.run(20 * MS)
    with pytest.raises(FailedPrecondition):
        net.do(A, lambda core, now: core.send(a, b"too late", now))
    # recv after the peer's Fin answers with end of stream, each time.
    net.do(B, lambda core, now: core.recv(b, now))
    assert net.of(B, PeerFinished) == [PeerFinished(b), PeerFinished(b)]
    assert [type(m) for m in net.sent[A]].count(Fin) == 1


def test_closing_with_unread_messages_waits_for_the_reader() -> None:
    net = Net(seed=5)
    a, b = established(net)
    net.do(A, lambda core, now: core.send(a, b"read me", now))
    net.do(A, lambda core, now: core.close(a, now))
    net.do(B, lambda core, now: core.close(b, now))
    net.run(200 * MS)
    assert net.of(B, Closed) == []  # a message is still unread at B
    assert net.of(A, Closed) == [Closed(a)]
    net.do(B, lambda core, now: core.recv(b, now))
    net.run(10 * MS)
    assert net.of(B, Data) == [Data(b, b"read me")]
    assert net.of(B, Closed) == [Closed(b)]


def test_retransmission_gives_up_with_timeout_at_both_ends() -> None:
    net = Net(seed=6)
    a, _b = established(net)
    net.faults.loss = 1.0
    net.do(A, lambda core, now: core.send(a, b"into the void", now))
    net.run(CONFIG.give_up_ns + 500 * MS)
    [error] = net.of(A, Error)
    assert error.error is Timeout
    assert error.node == A
    # A closed the circuit as it gave up, so B learns through the network layer.
    [error_b] = net.of(B, Error)
    assert error_b.error is Unreachable
    # Back-off: far fewer retransmissions than give_up / min RTO.
    segments = [m for m in net.sent[A] if isinstance(m, Segment)]
    assert 4 <= len(segments) <= 20
    net.check_ledger()


def test_idle_timeout() -> None:
    config = dataclasses.replace(CONFIG, idle_timeout_ns=300 * MS)
    net = Net(seed=7, config=config)
    net.pairs_flowing = False  # pair uses would keep the connection busy
    _a, _b = established(net)
    net.run(400 * MS)
    assert [e.error for e in net.of(A, Error)] == [Timeout]
    assert [e.error for e in net.of(B, Error)] == [Timeout]


def test_circuit_loss_fails_both_ends() -> None:
    net = Net(seed=8)
    _a, _b = established(net)
    net.break_circuit(CloseCode.UNREACHABLE)
    net.run(20 * MS)
    assert [(e.error, e.node) for e in net.of(A, Error)] == [(Unreachable, "r1")]
    assert [(e.error, e.node) for e in net.of(B, Error)] == [(Unreachable, "r1")]
    net.check_ledger()


def test_messages_for_unknown_connections_are_reset() -> None:
    net = Net(seed=9)
    a, b = established(net)
    net.do(A, lambda core, now: core.abort(a, now))
    net.run(20 * MS)
    [error] = net.of(B, Error)
    assert error.error is Unreachable
    assert "aborted" in error.reason
    # A stray Ack for a connection that no longer exists is answered with a Reset.
    before = net.cores[B].counters["unknown_connection"]
    net.do(B, lambda core, now: core.on_message(A, Ack(b, a, 1, ()), now))
    reset = net.sent[B][-1]
    assert isinstance(reset, Reset)
    assert reset.dst_conn == a
    assert net.cores[B].counters["unknown_connection"] == before + 1


def test_a_lone_record_is_acknowledged_after_the_delay_and_every_fourth_at_once() -> None:
    # Pairs off: only the messages' records and their Acks travel.
    net = Net(seed=1)
    net.pairs_flowing = False
    a, _ = established(net)
    net.run(50 * MS)
    per_ack = CONFIG.records_per_ack
    assert per_ack > 1

    def acks() -> int:
        return sum(isinstance(m, Ack) for m in net.sent[B])

    before = acks()
    net.do(A, lambda core, now: core.send(a, b"one", now))
    net.run(net.faults.delay_ns + CONFIG.ack_delay_ns // 2)  # arrived, not acknowledged yet
    assert acks() == before
    net.run(CONFIG.ack_delay_ns)
    assert acks() == before + 1
    # records_per_ack records at once: one Ack, at once.
    for _ in range(per_ack):
        net.do(A, lambda core, now: core.send(a, b"more", now))
    net.run(net.faults.delay_ns + CONFIG.ack_delay_ns // 2)
    assert acks() == before + 2
    # A Fin is acknowledged at once (the peer's close waits on it).
    net.do(A, lambda core, now: core.close(a, now))
    net.run(net.faults.delay_ns + CONFIG.ack_delay_ns // 2)
    assert acks() == before + 3


def test_a_round_trip_shorter_than_the_ack_delay_sends_each_record_once() -> None:
    """The retransmission timeout leaves room for the peer's delayed Ack: on a fast path,
    records acknowledged at once (every second one) set a timeout shorter than the delay, and
    a lone record used to time out before its Ack came, and went twice."""
    net = Net(seed=1, faults=Faults(delay_ns=50_000))  # 0.1 ms round trips
    net.pairs_flowing = False
    a, _ = established(net)
    for _ in range(10):
        for _ in range(2):  # acknowledged at once: a short round-trip sample
            net.do(A, lambda core, now: core.send(a, b"x" * 10, now))
        net.run(10 * MS)
        net.do(A, lambda core, now: core.send(a, b"y" * 10, now))  # its Ack waits
        net.run(10 * MS)
    segments = [m for m in net.sent[A] if isinstance(m, Segment)]
    assert len({m.seq for m in segments}) == 30
    assert len(segments) == 30
