"""Peer API wire form of the EGP messages: round trips, stable numbers, malformed input."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
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
from qnet.node import peer_wire
from qnet.node.peer_wire import Layer, from_wire, to_wire
from qnet.v1 import peer_pb2 as pb

UINT64 = st.integers(0, 2**64 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLE = st.floats(allow_nan=False, allow_infinity=False)


def _field_strategy(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    scalar: st.SearchStrategy[Any] = {
        FieldDescriptor.TYPE_UINT64: UINT64,
        FieldDescriptor.TYPE_INT64: INT64,
        FieldDescriptor.TYPE_DOUBLE: DOUBLE,
        FieldDescriptor.TYPE_STRING: st.text(),
    }[field.type]
    if field.is_repeated:
        return st.lists(scalar, max_size=20).map(tuple)
    return scalar


def messages_of(cls: type[PeerMessage]) -> st.SearchStrategy[PeerMessage]:
    """Any value of ``cls`` the wire can carry: each field over its proto type's whole range."""
    body = pb.PeerMessage.DESCRIPTOR.fields_by_name[peer_wire.CASE_OF[cls]].message_type
    assert body is not None
    kwargs = {f.name: _field_strategy(body.fields_by_name[f.name]) for f in fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **kwargs)


ANY_MESSAGE = st.sampled_from(peer_wire.WIRE_TYPES).flatmap(messages_of)

EXAMPLES: list[PeerMessage] = [
    Ack((1, 2, 3)),
    QueueAdd(7, "alice", 3, 10, 0.9, -1, "keep", "random", 42, -5),
    PairAssign(8, 12, "alice", 3, 0, 0.1),
    PairDiscard(9, (4, 5)),
    Purify(10, 12, 13, 0.1, 0.2, 1, 123_456),
    PurifyResult(11, 12, 13, -1, 123_999),
    Terminate(12, "bob", 4, "expired", -1, -1, 2, "memory decohered"),
    Expire(13, "bob", 4, 1, 17),
    MemoryFull(14),
]


def test_every_peer_message_type_has_a_wire_form() -> None:
    registered = {
        v
        for v in vars(events).values()
        if isinstance(v, type) and issubclass(v, PeerMessage) and v is not PeerMessage
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
    }
    assert peer_wire.layer_of_case("hello") is Layer.PEER
    assert {peer_wire.layer_of(m) for m in EXAMPLES} == {Layer.LINK}


def test_proto_fields_mirror_the_dataclasses_in_order() -> None:
    for cls in peer_wire.WIRE_TYPES:
        body = pb.PeerMessage.DESCRIPTOR.fields_by_name[peer_wire.CASE_OF[cls]].message_type
        assert body is not None
        assert [f.name for f in body.fields] == [f.name for f in fields(cls)]  # type: ignore[arg-type]
        assert [f.number for f in body.fields] == list(range(1, len(body.fields) + 1))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_examples_round_trip(message: PeerMessage) -> None:
    assert from_wire(to_wire(message)) == message


@given(ANY_MESSAGE)
def test_any_message_round_trips_through_bytes(message: PeerMessage) -> None:
    data = peer_wire.batch("alice", [to_wire(message)]).SerializeToString()
    received = pb.PeerBatch.FromString(data)
    assert received.sender == "alice"
    assert received.protocol_version == peer_wire.PROTOCOL_VERSION
    (decoded,) = (from_wire(m) for m in received.messages)
    assert decoded == message
    assert type(decoded) is type(message)


@given(st.lists(ANY_MESSAGE, max_size=10))
def test_batches_keep_their_order(messages: list[PeerMessage]) -> None:
    data = peer_wire.batch("bob", [to_wire(m) for m in messages]).SerializeToString()
    assert [from_wire(m) for m in pb.PeerBatch.FromString(data).messages] == messages


# --- malformed input -------------------------------------------------------------------------


def test_empty_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="empty PeerMessage"):
        from_wire(pb.PeerMessage())


@pytest.mark.parametrize(
    ("number", "layer"), [(25, "link"), (64, "network"), (130, "transport"), (500, "no")]
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
    # proto3 cannot tell a zero from an absent field: every case decodes with zero values and
    # the layer core judges them (e.g. number = 0 is refused by the EGP).
    for cls in peer_wire.WIRE_TYPES:
        message = pb.PeerMessage()
        getattr(message, peer_wire.CASE_OF[cls]).SetInParent()
        assert type(from_wire(message)) is cls


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
    ],
)
def test_unencodable_values_are_local_errors(message: PeerMessage, field: str) -> None:
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
