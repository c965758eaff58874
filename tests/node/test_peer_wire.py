"""Peer API wire form of the EGP and routing messages: round trips, stable numbers, malformed
input."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import given
from hypothesis import strategies as st

from qnet.errors import InvalidArgument, ProtocolError, VersionMismatch
from qnet.link import events
from qnet.link.events import (
    Ack,
    Expire,
    MemoryFull,
    PairAssign,
    PairDiscard,
    PeerMessage,
    Purify,
    PurifyResult,
    QueueAdd,
    Terminate,
)
from qnet.network import circuit_events, datagram, routing_events
from qnet.network.circuit_events import (
    ChainDiscard,
    CircuitAccept,
    CircuitMessage,
    CircuitPause,
    CircuitReject,
    CircuitResume,
    CircuitSetup,
    CircuitTeardown,
    PairComplete,
    PairTrack,
)
from qnet.network.datagram import DatagramMessage, NetDatagram
from qnet.network.routing_events import (
    AdvertAck,
    AdvertHeader,
    AdvertLink,
    DatabaseDescription,
    DatabaseRequest,
    LinkStateAdvert,
    RoutingHello,
    RoutingMessage,
)
from qnet.node import peer_wire
from qnet.node.peer_wire import Layer, WireMessage, from_wire, to_wire
from qnet.transport import events as transport_events
from qnet.transport.events import TransportMessage
from qnet.v1 import peer_pb2 as pb

UINT64 = st.integers(0, 2**64 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLE = st.floats(allow_nan=False, allow_infinity=False)


def _field_strategy(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    scalar: st.SearchStrategy[Any] = {
        FieldDescriptor.TYPE_UINT64: UINT64,
        FieldDescriptor.TYPE_INT64: INT64,
        FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
        FieldDescriptor.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
        FieldDescriptor.TYPE_DOUBLE: DOUBLE,
        FieldDescriptor.TYPE_STRING: st.text(),
        FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    }[field.type]
    if field.is_repeated:
        return st.lists(scalar, max_size=20).map(tuple)
    return scalar


LINK_TYPES = tuple(t for t in peer_wire.WIRE_TYPES if issubclass(t, PeerMessage))
ROUTING_TYPES = tuple(t for t in peer_wire.WIRE_TYPES if issubclass(t, RoutingMessage))
CIRCUIT_TYPES = tuple(
    t for t in peer_wire.WIRE_TYPES if issubclass(t, CircuitMessage | DatagramMessage)
)
TRANSPORT_TYPES = tuple(t for t in peer_wire.WIRE_TYPES if issubclass(t, TransportMessage))


def messages_of(cls: type[WireMessage]) -> st.SearchStrategy[WireMessage]:
    """Any value of a link message ``cls`` the wire can carry: each field over its proto
    type's whole range (the EGP judges values in its core, not on decoding)."""
    body = pb.PeerMessage.DESCRIPTOR.fields_by_name[peer_wire.CASE_OF[cls]].message_type
    assert body is not None
    kwargs = {f.name: _field_strategy(body.fields_by_name[f.name]) for f in fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **kwargs)


# Routing messages are checked on decoding (message_from_dict validates them), so these cover
# every valid value over the proto types' ranges: seq from 1, fidelities in [0, 1], each origin
# or peer once.
SEQ = st.integers(1, 2**64 - 1)
UNIT = st.floats(0.0, 1.0)
_records_links = st.lists(
    st.builds(AdvertLink, st.text(), st.floats(0.0, 1e300), UNIT),
    max_size=6,
    unique_by=lambda link: link.peer,
).map(tuple)
_records_headers = st.lists(
    st.builds(AdvertHeader, st.text(), SEQ, UINT64), max_size=6, unique_by=lambda h: h.origin
).map(tuple)
ROUTING_MESSAGE: st.SearchStrategy[WireMessage] = st.one_of(
    st.builds(
        RoutingHello,
        st.text(),
        SEQ,
        st.lists(st.text(), max_size=5).map(tuple),
        SEQ,
        SEQ,
        UNIT,
    ),
    st.builds(
        LinkStateAdvert,
        st.just("origin"),  # peers never equal to the origin: st.text() below may give ""
        SEQ,
        UINT64,
        st.integers(0, 2**32 - 1),
        _records_links.filter(lambda links: all(link.peer != "origin" for link in links)),
    ),
    st.builds(AdvertAck, st.text(), st.text(), SEQ),
    st.builds(DatabaseRequest, st.text(), UINT64, _records_headers),
    st.builds(DatabaseDescription, st.text(), UINT64, _records_headers),
)

# Circuit messages are judged by the circuit core, like link messages: any value goes.
ANY_MESSAGE = st.one_of(
    st.sampled_from(LINK_TYPES).flatmap(messages_of),
    ROUTING_MESSAGE,
    st.sampled_from(CIRCUIT_TYPES).flatmap(messages_of),
    st.sampled_from(TRANSPORT_TYPES).flatmap(messages_of),
)

EXAMPLES: list[WireMessage] = [
    Ack((1, 2, 3)),
    QueueAdd(7, "alice", 3, 10, 0.9, -1, "keep", "random", 42, -5),
    PairAssign(8, 12, "alice", 3, 0, 0.1),
    PairDiscard(9, (4, 5)),
    Purify(10, 12, 13, 0.1, 0.2, 1, 123_456),
    PurifyResult(11, 12, 13, -1, 123_999),
    Terminate(12, "bob", 4, "expired", -1, -1, 2, "memory decohered"),
    Expire(13, "bob", 4, 1, 17),
    MemoryFull(14),
    events.Cancel(15, "bob", 4),
    RoutingHello("alice", 3, ("bob", "r1"), 100_000_000, 400_000_000, 0.8),
    LinkStateAdvert(
        "alice", 7, 1_500, 8, (AdvertLink("bob", 9031.5, 0.8), AdvertLink("r1", 0.0, 0.46))
    ),
    LinkStateAdvert("bob", 1, 0, 0, ()),
    AdvertAck("bob", "alice", 7),
    DatabaseRequest("alice", 2, (AdvertHeader("alice", 7, 0), AdvertHeader("r1", 3, 999))),
    DatabaseDescription("bob", 2, (AdvertHeader("r2", 1, 12),)),
    CircuitSetup("alice", 1, ("alice", "r1", "bob"), 0.9, 0, (1 << 40) + 2, (6, 4)),
    CircuitAccept("alice", 1, (0.95, 0.95), 12_000_000),
    CircuitReject("alice", 1, "no_memory", "r1", "r1 has 2 memory qubits free, needs 4"),
    CircuitTeardown("alice", 1, "completed", "bob", "10 pairs delivered"),
    PairTrack("alice", 1, 17, 12, 3, (0.9, 0.05, 0.03, 0.02), 1_000, 2_000),
    ChainDiscard("alice", 1, 17),
    PairComplete("alice", 1, 12, 0, (0.9, 0.05, 0.03, 0.02), 3_000),
    CircuitPause("alice", 1),
    CircuitResume("alice", 1),
    NetDatagram("alice", "bob", 64, 1, b"\x00handshake"),
    transport_events.Syn(3, 49152, 7, 0.8, 4, 262_144),
    transport_events.SynAck(3, 5, 262_144),
    transport_events.HandshakeAck(5, 3, "alice", 2),
    transport_events.Reset(3, 0, "NotFound", "bob", "nothing listens on port 7"),
    transport_events.Ack(5, 3, 4, (6, 8)),
    transport_events.Segment(5, 3, 1, b"hello", 1),
    transport_events.Fin(5, 3, 2),
    transport_events.Window(3, 5, 1, 524_288),
    transport_events.PairDemand(5, 3, 3, 8, 16, 2),
    transport_events.PairUses(3, 5, 2, 10, (1, 1, 3, 0)),
    transport_events.PairsEnd(3, 5, 3),
    transport_events.Teleport(5, 3, 4, 12, 1, 0),
    transport_events.Teleport(5, 3, 5, 13, -1, -1),
    transport_events.EprRelease(5, 3, 6, 4),
    transport_events.EprCut(3, 5, 7, 6),
]


def test_every_peer_message_type_has_a_wire_form() -> None:
    registered = {
        v
        for module, base in (
            (events, PeerMessage),
            (routing_events, RoutingMessage),
            (circuit_events, CircuitMessage),
            (datagram, DatagramMessage),
            (transport_events, TransportMessage),
        )
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, base)
        and v is not base
        and v.__module__ == module.__name__
        and bool(getattr(v, "type_name", ""))
    }
    assert registered == set(peer_wire.WIRE_TYPES)
    assert {type(m) for m in EXAMPLES} == registered


def test_case_numbers_are_stable() -> None:
    # The wire format: changing any of these breaks every deployed daemon.
    numbers = {f.name: f.number for f in pb.PeerMessage.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert numbers == {
        "hello": 1,
        "link_ack": 16,
        "link_queue_add": 17,
        "link_pair_assign": 18,
        "link_pair_discard": 19,
        "link_purify": 20,
        "link_purify_result": 21,
        "link_terminate": 22,
        "link_expire": 23,
        "link_memory_full": 24,
        "link_cancel": 25,
        "net_routing_hello": 64,
        "net_link_state_advert": 65,
        "net_advert_ack": 66,
        "net_database_request": 67,
        "net_database_description": 68,
        "net_circuit_setup": 80,
        "net_circuit_accept": 81,
        "net_circuit_reject": 82,
        "net_circuit_teardown": 83,
        "net_pair_track": 84,
        "net_chain_discard": 85,
        "net_pair_complete": 86,
        "net_circuit_pause": 87,
        "net_circuit_resume": 88,
        "net_datagram": 112,
        "tp_syn": 128,
        "tp_syn_ack": 129,
        "tp_handshake_ack": 130,
        "tp_reset": 131,
        "tp_ack": 132,
        "tp_segment": 133,
        "tp_fin": 134,
        "tp_window": 135,
        "tp_pair_demand": 136,
        "tp_pair_uses": 137,
        "tp_pairs_end": 138,
        "tp_teleport": 139,
        "tp_epr_release": 140,
        "tp_epr_cut": 141,
    }
    assert peer_wire.layer_of_case("hello") is Layer.PEER
    assert {peer_wire.layer_of(m) for m in EXAMPLES} == {
        Layer.LINK,
        Layer.NETWORK,
        Layer.TRANSPORT,
    }
    assert {peer_wire.layer_of(m) for m in EXAMPLES if isinstance(m, RoutingMessage)} == {
        Layer.NETWORK
    }


def test_proto_fields_mirror_the_dataclasses_in_order() -> None:
    records = {"links": AdvertLink, "headers": AdvertHeader}
    for cls in peer_wire.WIRE_TYPES:
        body = pb.PeerMessage.DESCRIPTOR.fields_by_name[peer_wire.CASE_OF[cls]].message_type
        assert body is not None
        bodies: list[tuple[type, Descriptor | None]] = [(cls, body)]
        bodies += [
            (records[f.name], f.message_type) for f in body.fields if f.message_type is not None
        ]
        for record, message in bodies:
            assert message is not None
            names = [f.name for f in fields(record)]
            assert [f.name for f in message.fields] == names
            assert [f.number for f in message.fields] == list(range(1, len(names) + 1))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_examples_round_trip(message: WireMessage) -> None:
    assert from_wire(to_wire(message)) == message


@given(ANY_MESSAGE)
def test_any_message_round_trips_through_bytes(message: WireMessage) -> None:
    data = peer_wire.batch("alice", [to_wire(message)]).SerializeToString()
    received = pb.PeerBatch.FromString(data)
    assert received.sender == "alice"
    assert received.protocol_version == peer_wire.PROTOCOL_VERSION
    (decoded,) = (from_wire(m) for m in received.messages)
    assert decoded == message
    assert type(decoded) is type(message)


@given(st.lists(ANY_MESSAGE, max_size=10))
def test_batches_keep_their_order(messages: list[WireMessage]) -> None:
    data = peer_wire.batch("bob", [to_wire(m) for m in messages]).SerializeToString()
    assert [from_wire(m) for m in pb.PeerBatch.FromString(data).messages] == messages


# --- malformed input -------------------------------------------------------------------------


def test_empty_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="empty PeerMessage"):
        from_wire(pb.PeerMessage())


@pytest.mark.parametrize(
    ("number", "layer"), [(63, "link"), (120, "network"), (191, "transport"), (500, "no")]
)
def test_unknown_case_is_named_with_its_layer(number: int, layer: str) -> None:
    # A length-delimited field the schema does not know, as a newer peer might send.
    data = _varint(number << 3 | 2) + b"\x00"
    with pytest.raises(ProtocolError, match=f"field {number} \\({layer} layer\\)"):
        from_wire(pb.PeerMessage.FromString(data))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_hello_is_not_a_layer_message() -> None:
    with pytest.raises(ProtocolError, match="Hello"):
        from_wire(peer_wire.hello("alice", 1))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("link_queue_add", "min_fidelity"),
        ("link_pair_assign", "bright_state"),
        ("link_purify", "sacrifice_bright_state"),
    ],
)
def test_non_finite_numbers_are_refused_by_name(case: str, name: str, value: float) -> None:
    message = pb.PeerMessage()
    setattr(getattr(message, case), name, value)
    with pytest.raises(ProtocolError, match=name):
        from_wire(message)


def test_defaults_decode() -> None:
    # proto3 cannot tell a zero from an absent field: every link case decodes with zero values
    # and the EGP core judges them (e.g. number = 0 is refused by the EGP).
    for cls in LINK_TYPES:
        message = pb.PeerMessage()
        getattr(message, peer_wire.CASE_OF[cls]).SetInParent()
        assert type(from_wire(message)) is cls


def test_routing_defaults_are_refused_where_zero_is_invalid() -> None:
    # Routing messages are validated on decoding: a zero seq is not a message.
    valid_at_zero = {DatabaseRequest, DatabaseDescription}
    for cls in ROUTING_TYPES:
        message = pb.PeerMessage()
        getattr(message, peer_wire.CASE_OF[cls]).SetInParent()
        if cls in valid_at_zero:
            assert type(from_wire(message)) is cls
        else:
            with pytest.raises(ProtocolError, match="routing"):
                from_wire(message)


def _advert_wire(**link: Any) -> pb.PeerMessage:
    message = pb.PeerMessage()
    advert = message.net_link_state_advert
    advert.origin, advert.seq = "alice", 1
    advert.links.add(peer="bob", rate_hz=10.0, fidelity=0.9)
    advert.links.add(**link)
    return message


@pytest.mark.parametrize(
    ("link", "match"),
    [
        ({"peer": "r1", "rate_hz": math.nan, "fidelity": 0.9}, "rate_hz"),
        ({"peer": "r1", "rate_hz": math.inf, "fidelity": 0.9}, "rate_hz"),
        ({"peer": "r1", "rate_hz": -1.0, "fidelity": 0.9}, "rate -1.0"),
        ({"peer": "r1", "rate_hz": 1.0, "fidelity": 1.5}, "fidelity 1.5"),
        ({"peer": "bob", "rate_hz": 1.0, "fidelity": 0.9}, "name a peer twice"),
        ({"peer": "alice", "rate_hz": 1.0, "fidelity": 0.9}, "origin itself"),
    ],
)
def test_bad_nested_records_are_protocol_errors(link: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        from_wire(_advert_wire(**link))


def test_bad_routing_messages_are_protocol_errors() -> None:
    hello = pb.PeerMessage()
    hello.net_routing_hello.MergeFrom(
        pb.RoutingHello(node="a", seq=1, hello_interval_ns=1, dead_interval_ns=2)
    )
    hello.net_routing_hello.fidelity_threshold = math.nan
    with pytest.raises(ProtocolError, match="fidelity_threshold"):
        from_wire(hello)
    request = pb.PeerMessage()
    request.net_database_request.headers.add(origin="a", seq=1)
    request.net_database_request.headers.add(origin="a", seq=2)
    with pytest.raises(ProtocolError, match="origin twice"):
        from_wire(request)


def test_nested_unknown_fields_are_ignored() -> None:
    # A newer peer may add fields to a nested record; this node reads what it knows.
    link = pb.AdvertLink(peer="bob", rate_hz=3.0, fidelity=0.9)
    data = link.SerializeToString() + _varint(9 << 3 | 0) + _varint(5)
    advert = pb.LinkStateAdvert(origin="alice", seq=2)
    advert.links.add().MergeFromString(data)
    decoded = from_wire(pb.PeerMessage(net_link_state_advert=advert))
    assert decoded == LinkStateAdvert("alice", 2, 0, 0, (AdvertLink("bob", 3.0, 0.9),))


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (Ack((1, -1)), "Ack.msg_ids"),
        (PairDiscard(2**64, (1,)), "PairDiscard.msg_id"),
        (Terminate(1, "bob", 4, "", -1, -1, -2, ""), "Terminate.keep_count"),
        (PairAssign(1, 2, "a", 3, 0, math.nan), "PairAssign.bright_state"),
        (QueueAdd(1, "a", 2, 3, 0.5, -1, 3, "Z", 0, 0), "QueueAdd.kind"),  # type: ignore[arg-type]
        (MemoryFull(True), "MemoryFull.msg_id"),
        (PairAssign(1, 2, "\ud800", 3, 0, 0.1), "PairAssign.origin"),
        (RoutingHello("a", -1, (), 1, 2, 0.8), "RoutingHello.seq"),
        (RoutingHello("a", 1, ("b", 3), 1, 2, 0.8), "RoutingHello.heard"),  # type: ignore[arg-type]
        (RoutingHello("a", 1, (), 1, 2, math.inf), "RoutingHello.fidelity_threshold"),
        (LinkStateAdvert("a", 1, 0, 2**32, ()), "LinkStateAdvert.memory_qubits"),
        (
            LinkStateAdvert("a", 1, 0, 2, (AdvertLink("b", 1.0, math.nan),)),
            r"LinkStateAdvert.links\[0\].fidelity",
        ),
        (
            DatabaseRequest("a", 1, (AdvertHeader("b", 1, 0), AdvertHeader("c", 1, -5))),
            r"DatabaseRequest.headers\[1\].age_ns",
        ),
        (
            DatabaseRequest("a", 1, ("b",)),  # type: ignore[arg-type]
            r"DatabaseRequest.headers\[0\] = 'b' \(not a record\)",
        ),
    ],
)
def test_unencodable_values_are_local_errors(message: WireMessage, field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"cannot encode {field}"):
        to_wire(message)


def test_unregistered_type_has_no_wire_form() -> None:
    class Stray(PeerMessage):
        __slots__ = ()

    with pytest.raises(InvalidArgument, match="Stray has no Peer API wire form"):
        to_wire(Stray())


def test_version_and_hello_checks() -> None:
    good = peer_wire.batch("alice", [peer_wire.hello("alice", 3, "bob")])
    peer_wire.check_version(good)
    assert peer_wire.hello_of(good).sequence == 3
    with pytest.raises(VersionMismatch, match="version 2"):
        peer_wire.check_version(pb.PeerBatch(protocol_version=2, sender="alice"))
    with pytest.raises(ProtocolError, match="does not start with a Hello"):
        peer_wire.hello_of(peer_wire.batch("alice", [to_wire(Ack((1,)))]))
    with pytest.raises(ProtocolError, match="Hello names 'mallory'"):
        peer_wire.hello_of(peer_wire.batch("alice", [peer_wire.hello("mallory", 1)]))
