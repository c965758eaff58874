"""The pieces on their own: the state tables, the wire form of every message, the record
sender and receiver, and the core's answer to a peer that breaks the protocol."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.errors import InvalidArgument, ProtocolError
from qnet.network.circuit_events import CloseCode
from qnet.transport import TransportConfig, message_from_dict
from qnet.transport.events import (
    Ack,
    CloseCircuit,
    EprCut,
    EprRelease,
    Error,
    Fin,
    HandshakeAck,
    PairDemand,
    PairsEnd,
    PairUses,
    Reset,
    Segment,
    Syn,
    SynAck,
    Teleport,
    TransportMessage,
    Window,
)
from qnet.transport.reliable import RecordReceiver, RecordSender
from qnet.transport.states import (
    APP_CALLS,
    CONN_TRANSITIONS,
    ConnInput,
    ConnState,
    IllegalTransition,
    next_conn_state,
)
from tests.transport.harness import MS, A, B, Net, call, established

# -- state tables -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(ConnState))
@pytest.mark.parametrize("event", list(ConnInput))
def test_every_state_and_input_is_a_transition_or_an_error(
    state: ConnState, event: ConnInput
) -> None:
    if (state, event) in CONN_TRANSITIONS:
        assert next_conn_state(state, event) is CONN_TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransition, match=state.value):
            next_conn_state(state, event)


def test_closed_is_final_and_every_other_state_can_fail() -> None:
    assert not [k for k in CONN_TRANSITIONS if k[0] is ConnState.CLOSED]
    for state in ConnState:
        if state is not ConnState.CLOSED:
            assert CONN_TRANSITIONS[(state, ConnInput.FAIL)] is ConnState.CLOSED
    assert all(ConnState.CLOSED not in states for states in APP_CALLS.values())


# -- wire form --------------------------------------------------------------------------------

SAMPLES: list[TransportMessage] = [
    Syn(1, 49152, 7, 0.9, 4, 65536),
    SynAck(1, 2, 65536),
    HandshakeAck(2, 1, "alice", 3),
    Reset(1, 2, "Timeout", "bob", "no acknowledgement"),
    Ack(1, 2, 5, (7, 9)),
    Segment(1, 2, 3, b"\x00\xffbytes", 1),
    Fin(1, 2, 4),
    Window(1, 2, 5, 1 << 40),
    PairDemand(1, 2, 6, 10, 3, 1),
    PairUses(1, 2, 7, 100, (0, 1, 2, 3, 4)),
    PairsEnd(1, 2, 8),
    Teleport(1, 2, 9, 101, 1, 0),
    EprRelease(1, 2, 10, 6),
    EprCut(1, 2, 11, 7),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: TransportMessage) -> None:
    data = message.to_dict()
    assert data["type"] == message.type_name
    assert message_from_dict(data) == message


def test_all_message_types_are_sampled() -> None:
    from qnet.transport.events import _MESSAGE_TYPES

    assert set(_MESSAGE_TYPES.values()) == {type(m) for m in SAMPLES}


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"type": "nope"},
        {**Fin(1, 2, 3).to_dict(), "seq": "3"},
        {**Segment(1, 2, 3, b"", 1).to_dict(), "payload": "text"},
        {k: v for k, v in Ack(1, 2, 3, ()).to_dict().items() if k != "selective"},
        {**PairUses(1, 2, 3, 0, ()).to_dict(), "uses": [1, "x"]},
        {**Syn(1, 2, 3, 0.5, 1, 1).to_dict(), "min_fidelity": float("nan")},
    ],
)
def test_malformed_messages_are_protocol_errors(data: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        message_from_dict(data)


# -- record sender and receiver ---------------------------------------------------------------

CONFIG = TransportConfig(
    segment_bytes=10, max_in_flight=4, initial_rto_ns=100, min_rto_ns=10, max_rto_ns=1000
)


def test_control_records_merge_while_they_wait() -> None:
    sender = RecordSender(CONFIG, 2, 1)
    sender.queue_control(Window(2, 1, 0, 10))
    sender.queue_control(PairUses(2, 1, 0, 0, (1, 0)))
    sender.queue_control(PairUses(2, 1, 0, 2, (4,)))
    sender.queue_control(Window(2, 1, 0, 30))
    sender.queue_control(PairUses(2, 1, 0, 9, (0,)))  # not consecutive: a record of its own
    out = sender.transmit(0)
    assert out == [
        Window(2, 1, 1, 30),
        PairUses(2, 1, 2, 0, (1, 0, 4)),
        PairUses(2, 1, 3, 9, (0,)),
    ]


def test_messages_are_cut_to_segments_within_the_window() -> None:
    sender = RecordSender(CONFIG, 2, 1)
    sender.data_limit = 25
    sender.queue_message(b"a" * 23)
    sender.queue_message(b"")
    sender.queue_fin()
    out = sender.transmit(0)
    assert [(len(s.payload), s.last) for s in out if isinstance(s, Segment)] == [
        (10, 0),
        (10, 0),
        (3, 1),
        (0, 1),  # the empty message: one empty last segment
    ]
    assert sender.transmit(0) == []  # max_in_flight = 4: the Fin waits for an Ack
    sender.on_ack(3, (), 1)
    assert sender.transmit(1) == [Fin(2, 1, 5)]


def test_window_stops_segments_but_not_control() -> None:
    sender = RecordSender(CONFIG, 2, 1)
    sender.data_limit = 5
    sender.queue_message(b"0123456789")
    sender.queue_control(PairsEnd(2, 1, 0))
    out = sender.transmit(0)
    assert out == [PairsEnd(2, 1, 1), Segment(2, 1, 2, b"01234", 0)]
    assert sender.transmit(0) == []
    sender.data_limit = 10
    assert sender.transmit(0) == [Segment(2, 1, 3, b"56789", 1)]


def test_retransmission_backs_off_and_karn_skips_samples() -> None:
    sender = RecordSender(CONFIG, 2, 1)
    sender.queue_control(PairsEnd(2, 1, 0))
    [record] = sender.transmit(0)
    assert sender.deadline() == 100
    assert sender.on_timer(99) == []
    assert sender.on_timer(100) == [record]
    assert sender.deadline() == 300  # doubled
    assert sender.on_timer(300) == [record]
    assert sender.deadline() == 700
    sender.on_timer(700)
    assert sender.deadline() == 1500
    sender.on_timer(1500)
    assert sender.deadline() == 2500  # capped at max_rto_ns = 1000
    sender.on_ack(2, (), 1750)
    assert sender.rtt.samples == 0  # a retransmitted record gives no sample
    assert sender.deadline() is None
    sender.queue_control(PairsEnd(2, 1, 0))
    sender.transmit(3000)
    sender.on_ack(3, (), 3040)
    assert sender.rtt.samples == 1
    assert sender.rtt.mean_ns == 40


def test_three_stalled_acks_retransmit_the_first_hole() -> None:
    sender = RecordSender(CONFIG, 2, 1)
    for _ in range(4):
        sender.queue_control(PairsEnd(2, 1, 0))
    first, *_ = sender.transmit(0)
    assert sender.on_ack(1, (2,), 5) == []
    assert sender.on_ack(1, (2, 3), 6) == []
    assert sender.on_ack(1, (2, 3, 4), 7) == [first]
    assert sender.on_timer(100) == [first]  # records the receiver holds are not resent


def test_ack_for_what_was_never_sent_is_a_protocol_error() -> None:
    sender = RecordSender(CONFIG, 2, 1)
    with pytest.raises(ProtocolError):
        sender.on_ack(2, (), 0)


def test_sender_gives_up() -> None:
    sender = RecordSender(dataclasses.replace(CONFIG, give_up_ns=500), 2, 1)
    sender.queue_control(PairsEnd(2, 1, 0))
    sender.transmit(10)
    assert not sender.given_up(509)
    assert sender.given_up(510)
    assert sender.give_up_deadline() == 510


@given(order=st.permutations(range(1, 9)), dups=st.lists(st.integers(1, 8), max_size=6))
def test_receiver_hands_over_in_order_once(order: list[int], dups: list[int]) -> None:
    receiver = RecordReceiver(CONFIG)
    got: list[int] = []
    for seq in [*order, *dups]:
        got += [r.seq for r in receiver.accept(Fin(1, 2, seq))]
        assert list(receiver.selective()) == sorted(receiver.selective())
        assert all(s > receiver.next_seq for s in receiver.selective())
    assert got == list(range(1, 9))
    assert receiver.next_seq == 9


def test_receiver_refuses_absurd_numbers() -> None:
    receiver = RecordReceiver(CONFIG)
    for seq in (0, -1, 1 << 20):
        with pytest.raises(ProtocolError):
            receiver.accept(Fin(1, 2, seq))


# -- a peer that breaks the protocol ----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda a, b: PairUses(b, a, 1, 5, (1,)),  # the connector decides nothing
        lambda a, b: Segment(b, a, 1, b"x" * 10_000, 1),  # beyond the granted window
        lambda a, b: SynAck(b, a, 100),  # the acceptor sent no Syn
        lambda a, b: Teleport(b, a, 1, 3, 0, 0),  # pair 3 is not for a teleport
        lambda a, b: Window(b, a, 1, 1),  # takes back bytes granted
        lambda a, b: EprCut(b, a, 1, 0),  # no EprRelease asked for it
        lambda a, b: EprRelease(b, a, 1, 5),  # took more epr pairs than were assigned
    ],
)
def test_protocol_violation_resets_the_connection_at_both_ends(make: Any) -> None:
    net = Net(seed=1)
    net.pairs_flowing = False
    a, b = established(net)
    with pytest.raises(ProtocolError):
        net.do(B, lambda core, now: core.on_message(A, make(a, b), now))
    [error] = net.of(B, Error)
    assert error.error is ProtocolError
    assert error.node == B
    net.run(10 * MS)
    assert [e.error for e in net.of(A, Error)] == [ProtocolError]
    assert net.cores[A].connections() == {}
    assert net.cores[B].connections() == {}


MESSAGES = st.one_of(
    st.builds(
        Segment,
        st.just(0),
        st.just(0),
        st.integers(-2, 12),
        st.binary(max_size=64),
        st.integers(-1, 2),
    ),
    st.builds(Fin, st.just(0), st.just(0), st.integers(-2, 12)),
    st.builds(Window, st.just(0), st.just(0), st.integers(-2, 12), st.integers(-5, 10**6)),
    st.builds(
        PairDemand,
        st.just(0),
        st.just(0),
        st.integers(-2, 12),
        st.integers(-1, 9),
        st.integers(-1, 9),
        st.integers(-1, 9),
    ),
    st.builds(
        PairUses,
        st.just(0),
        st.just(0),
        st.integers(-2, 12),
        st.integers(-1, 9),
        st.lists(st.integers(-1, 6), max_size=4).map(tuple),
    ),
    st.builds(PairsEnd, st.just(0), st.just(0), st.integers(-2, 12)),
    st.builds(EprRelease, st.just(0), st.just(0), st.integers(-2, 12), st.integers(-1, 9)),
    st.builds(EprCut, st.just(0), st.just(0), st.integers(-2, 12), st.integers(-1, 9)),
    st.builds(
        Teleport,
        st.just(0),
        st.just(0),
        st.integers(-2, 12),
        st.integers(-1, 9),
        st.integers(-2, 2),
        st.integers(-2, 2),
    ),
    st.builds(
        Ack,
        st.just(0),
        st.just(0),
        st.integers(-2, 12),
        st.lists(st.integers(-1, 12), max_size=3).map(tuple),
    ),
    st.builds(
        HandshakeAck, st.just(0), st.just(0), st.sampled_from([A, B, "x"]), st.integers(0, 3)
    ),
    st.builds(SynAck, st.just(0), st.just(0), st.integers(-1, 9)),
    st.builds(
        Reset,
        st.just(0),
        st.just(0),
        st.sampled_from(["Timeout", "Bogus"]),
        st.just(A),
        st.text(max_size=5),
    ),
)


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(st.tuples(st.booleans(), MESSAGES), max_size=6))
def test_whatever_a_peer_sends_only_protocol_errors_and_no_leaks(
    messages: list[tuple[bool, TransportMessage]],
) -> None:
    net = Net(seed=2)
    a, b = established(net)
    net.run(10 * MS)
    for to_b, message in messages:
        node, conn, peer = (B, b, a) if to_b else (A, a, b)
        sender = A if to_b else B
        addressed = dataclasses.replace(message, dst_conn=conn, src_conn=peer)  # type: ignore[type-var]
        with contextlib.suppress(ProtocolError):
            # on_message(sender, message, now)
            net.do(node, call("on_message", sender, addressed))
        net.run(5 * MS)
        net.check_ledger()
    net.run(3_000 * MS)
    net.check_ledger()


def test_driver_answers_out_of_turn_are_protocol_errors() -> None:
    net = Net(seed=3)
    a, _ = established(net)
    circuit = net.cores[A].connection(a).circuit
    assert circuit is not None
    with pytest.raises(ProtocolError, match="circuit open in state established"):
        net.cores[A].on_circuit_open(a, ("alice", 99), net.now)
    with pytest.raises(ProtocolError, match="already carries"):
        net.cores[A].on_circuit_open(a, circuit, net.now)
    with pytest.raises(ProtocolError, match="circuit failed in state established"):
        net.cores[A].on_circuit_failed(a, CloseCode.UNREACHABLE, "late", net.now)
    with pytest.raises(InvalidArgument):
        net.cores[A].on_measured(12345, (0,), net.now)
    # An answer for a connection that ended meanwhile is not an error: the circuit is closed.
    net.cores[A].on_circuit_open(424242, ("alice", 77), net.now)
    assert CloseCircuit(("alice", 77)) in net.cores[A].pop_outputs()
