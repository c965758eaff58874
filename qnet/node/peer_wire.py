"""Conversions between the layers' peer messages and the Peer API's proto ``PeerMessage``.

The wire form mirrors the dataclasses field by field (same names; see proto/qnet/v1/peer.proto):
scalars as scalars, tuples as repeated fields, small frozen records (``AdvertLink``) as nested
messages. So one table says which dataclass travels in which ``PeerMessage`` case, and the
conversion is generic: it goes through each family's ``to_dict`` and ``message_from_dict``,
which check types and ranges. Both directions are total:

- ``to_wire`` encodes any registered message, or raises ``InvalidArgument`` (our own caller's
  mistake: a value the wire cannot carry, such as a negative id).
- ``from_wire`` decodes any proto ``PeerMessage`` into a dataclass, or raises ``ProtocolError``
  naming what is wrong (the peer broke the protocol): an empty message, a case this node does
  not know, a Hello out of place, a non-finite number. Semantic checks (is this kind known,
  is this message legal now) stay in the layer cores.

A family of messages (a marker base class, its ``message_from_dict`` and the range of case
numbers its layer gave it) is one ``FAMILIES`` entry; a message type is one ``WIRE_TYPES``
entry plus its proto message and case, named ``<family prefix><type_name>``. The tables are
checked against the proto descriptors at import, nested records included.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from typing import Any, ClassVar, Final, Protocol

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from qnet.errors import InvalidArgument, ProtocolError, VersionMismatch
from qnet.link import events as link_events
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
    DatabaseDescription,
    DatabaseRequest,
    LinkStateAdvert,
    RoutingHello,
    RoutingMessage,
)
from qnet.transport import events as transport_events
from qnet.transport.events import TransportMessage
from qnet.v1 import peer_pb2 as pb

#: The Peer API version this implementation speaks (``PeerBatch.protocol_version``).
PROTOCOL_VERSION = 1

ONEOF: Final = "body"
HELLO_CASE: Final = "hello"


class WireMessage(Protocol):
    """What every family's messages look like: frozen dataclasses with a ``type_name`` and a
    ``to_dict`` whose output their family's ``message_from_dict`` takes back."""

    type_name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]: ...


class Layer(Enum):
    """Who a ``PeerMessage`` case belongs to, by its field number (see peer.proto)."""

    PEER = "peer"  # 1-15: the Peer protocol itself (Hello)
    LINK = "link"  # 16-63
    NETWORK = "network"  # 64-127
    TRANSPORT = "transport"  # 128-191


_LAYER_RANGES: tuple[tuple[range, Layer], ...] = (
    (range(1, 16), Layer.PEER),
    (range(16, 64), Layer.LINK),
    (range(64, 128), Layer.NETWORK),
    (range(128, 192), Layer.TRANSPORT),
)


@dataclass(frozen=True, slots=True)
class Family:
    """The messages of one protocol core: their base class, how they are rebuilt from a dict,
    the prefix of their case names and the case numbers reserved for them."""

    base: type
    from_dict: Callable[[dict[str, Any]], Any]
    case_prefix: str
    numbers: range


FAMILIES: tuple[Family, ...] = (
    Family(PeerMessage, link_events.message_from_dict, "link_", range(16, 64)),
    Family(RoutingMessage, routing_events.message_from_dict, "net_", range(64, 80)),
    Family(CircuitMessage, circuit_events.message_from_dict, "net_", range(80, 112)),
    Family(DatagramMessage, datagram.message_from_dict, "net_", range(112, 128)),
    Family(TransportMessage, transport_events.message_from_dict, "tp_", range(128, 192)),
)

#: Every dataclass that crosses the Peer API, in the order of its case numbers.
WIRE_TYPES: tuple[type[WireMessage], ...] = (
    Ack,
    QueueAdd,
    PairAssign,
    PairDiscard,
    Purify,
    PurifyResult,
    Terminate,
    Expire,
    MemoryFull,
    link_events.Cancel,
    RoutingHello,
    LinkStateAdvert,
    AdvertAck,
    DatabaseRequest,
    DatabaseDescription,
    CircuitSetup,
    CircuitAccept,
    CircuitReject,
    CircuitTeardown,
    PairTrack,
    ChainDiscard,
    PairComplete,
    CircuitPause,
    CircuitResume,
    NetDatagram,
    transport_events.Syn,
    transport_events.SynAck,
    transport_events.HandshakeAck,
    transport_events.Reset,
    transport_events.Ack,
    transport_events.Segment,
    transport_events.Fin,
    transport_events.Window,
    transport_events.PairDemand,
    transport_events.PairUses,
    transport_events.PairsEnd,
    transport_events.Teleport,
    transport_events.EprRelease,
    transport_events.EprCut,
)

_BODY_FIELDS: dict[str, FieldDescriptor] = {
    f.name: f for f in pb.PeerMessage.DESCRIPTOR.oneofs_by_name[ONEOF].fields
}


def family_of(cls: type) -> Family:
    for family in FAMILIES:
        if issubclass(cls, family.base):
            return family
    raise AssertionError(f"{cls.__name__} belongs to no family of peer messages")


def _case_name(cls: type[WireMessage]) -> str:
    return family_of(cls).case_prefix + cls.type_name


def _record_of(hint: object) -> type | None:
    """The record class of a ``Record`` or ``tuple[Record, ...]`` annotation, else None."""
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint if isinstance(hint, type) and is_dataclass(hint) else None


def _check_mirrors(cls: type, body: Descriptor) -> None:
    """The proto message must carry exactly the dataclass's fields, records as messages and
    tuples as repeated fields, recursively (a bug here otherwise)."""
    ours = [f.name for f in fields(cls)]
    theirs = list(body.fields_by_name)
    if sorted(ours) != sorted(theirs):
        raise AssertionError(
            f"{body.full_name} has fields {sorted(theirs)}, {cls.__name__} has {sorted(ours)}"
        )
    hints = typing.get_type_hints(cls)
    for name in ours:
        field = body.fields_by_name[name]
        hint = hints[name]
        record = _record_of(hint)
        repeated = typing.get_origin(hint) is tuple
        if repeated != field.is_repeated or (record is None) != (field.message_type is None):
            raise AssertionError(f"{body.full_name}.{name} does not mirror {cls.__name__}.{name}")
        if record is not None:
            assert field.message_type is not None
            _check_mirrors(record, field.message_type)


def _build_tables() -> tuple[dict[type[WireMessage], str], dict[str, type[WireMessage]]]:
    case_of: dict[type[WireMessage], str] = {}
    for cls in WIRE_TYPES:
        case = _case_name(cls)
        field = _BODY_FIELDS.get(case)
        if field is None or field.message_type is None:
            raise AssertionError(f"peer.proto has no PeerMessage case {case!r} for {cls.__name__}")
        if field.number not in family_of(cls).numbers:
            raise AssertionError(f"case {case} = {field.number} is outside its family's numbers")
        _check_mirrors(cls, field.message_type)
        case_of[cls] = case
    return case_of, {case: cls for cls, case in case_of.items()}


CASE_OF, TYPE_OF = _build_tables()


def layer_of_case(case: str) -> Layer:
    """The layer of a ``PeerMessage`` case, from its field number."""
    field = _BODY_FIELDS.get(case)
    if field is None:
        raise ValueError(f"PeerMessage has no case {case!r}")
    layer = _layer_of_number(field.number)
    if layer is None:
        raise AssertionError(f"PeerMessage case {case!r} is outside every layer's numbers")
    return layer


def _layer_of_number(number: int) -> Layer | None:
    for numbers, layer in _LAYER_RANGES:
        if number in numbers:
            return layer
    return None


def layer_of(message: WireMessage) -> Layer:
    """The layer a message belongs to (the one whose core handles it at the receiver)."""
    return layer_of_case(_case_of(message))


def _case_of(message: WireMessage) -> str:
    try:
        return CASE_OF[type(message)]
    except KeyError:
        raise InvalidArgument(f"{type(message).__name__} has no Peer API wire form") from None


# --- dataclass -> proto ----------------------------------------------------------------------


def to_wire(message: WireMessage) -> pb.PeerMessage:
    """Encode one message; a value the wire cannot carry raises InvalidArgument naming it."""
    case = _case_of(message)
    out = pb.PeerMessage()
    body = getattr(out, case)
    body.SetInParent()  # a message whose fields are all zero is still this case
    data = message.to_dict()
    data.pop("type", None)
    _fill(body, data, type(message).__name__)
    return out


def _fill(body: Message, data: Mapping[str, Any], where: str) -> None:
    for name, value in data.items():
        field = body.DESCRIPTOR.fields_by_name.get(name)
        if field is None:  # _check_mirrors makes this a caller's stray record
            raise InvalidArgument(f"cannot encode {where}.{name}: no such field on the wire")
        if field.message_type is not None:
            _fill_records(body, field, value, f"{where}.{name}")
            continue
        try:
            if field.is_repeated:
                if not isinstance(value, list | tuple):
                    raise TypeError("not a sequence")
                for item in value:
                    _check_finite(item)
                getattr(body, name).extend(value)
            else:
                _check_finite(value)
                setattr(body, name, value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"cannot encode {where}.{name} = {value!r} ({exc})") from None


def _fill_records(body: Message, field: Any, value: Any, where: str) -> None:
    if not field.is_repeated:
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"cannot encode {where} = {value!r} (not a record)")
        _fill(getattr(body, field.name), value, where)
        return
    if not isinstance(value, list | tuple):
        raise InvalidArgument(f"cannot encode {where} = {value!r} (not a sequence)")
    container = getattr(body, field.name)
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise InvalidArgument(f"cannot encode {where}[{i}] = {item!r} (not a record)")
        _fill(container.add(), item, f"{where}[{i}]")


def _check_finite(value: object) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")


def hello(node: str, sequence: int, recipient: str = "", incarnation: int = 0) -> pb.PeerMessage:
    return pb.PeerMessage(
        hello=pb.Hello(node=node, sequence=sequence, recipient=recipient, incarnation=incarnation)
    )


def batch(sender: str, messages: Sequence[pb.PeerMessage]) -> pb.PeerBatch:
    return pb.PeerBatch(protocol_version=PROTOCOL_VERSION, sender=sender, messages=messages)


# --- proto -> dataclass ----------------------------------------------------------------------


def _unknown_fields(message: pb.PeerMessage) -> str:
    """The field numbers the parser kept but did not know, with their layers (for errors)."""
    described = []
    unknown = UnknownFieldSet(message)
    for field in (unknown[i] for i in range(len(unknown))):
        layer = _layer_of_number(field.field_number)
        described.append(f"{field.field_number} ({layer.value if layer else 'no'} layer)")
    return ", ".join(sorted(set(described))) or "?"


def from_wire(message: pb.PeerMessage) -> WireMessage:
    """Decode one message; anything this node cannot act on raises ProtocolError."""
    case = message.WhichOneof(ONEOF)
    if case is None:
        if message.ByteSize() == 0:
            raise ProtocolError("empty PeerMessage (no case set)")
        raise ProtocolError(
            f"PeerMessage of a type this node does not know (field {_unknown_fields(message)})"
        )
    if case == HELLO_CASE:
        raise ProtocolError("Hello is only allowed as the first message of a stream")
    cls = TYPE_OF.get(case)
    if cls is None:
        raise ProtocolError(f"PeerMessage case {case!r} is not handled by this node")
    data = _plain(getattr(message, case))
    data["type"] = cls.type_name
    decoded: WireMessage = family_of(cls).from_dict(data)
    return decoded


def _plain(body: Message) -> dict[str, Any]:
    """A proto message as the dict ``to_dict`` would give: repeated fields as lists, nested
    messages as dicts (unknown fields, which a newer peer may add, are left out)."""
    data: dict[str, Any] = {}
    for field in body.DESCRIPTOR.fields:
        value = getattr(body, field.name)
        if field.message_type is not None:
            data[field.name] = [_plain(v) for v in value] if field.is_repeated else _plain(value)
        else:
            data[field.name] = list(value) if field.is_repeated else value
    return data


# --- batches ---------------------------------------------------------------------------------


class _Versioned(Protocol):
    @property
    def protocol_version(self) -> int: ...


def check_version(message: _Versioned) -> None:
    if message.protocol_version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"peer speaks Peer API version {message.protocol_version}; this node speaks"
            f" {PROTOCOL_VERSION}"
        )


def hello_of(received: pb.PeerBatch) -> pb.Hello:
    """The Hello that must open a stream: the batch's first message, naming its sender."""
    if not received.messages or received.messages[0].WhichOneof(ONEOF) != HELLO_CASE:
        raise ProtocolError(f"stream from {received.sender!r} does not start with a Hello")
    greeting = received.messages[0].hello
    if greeting.node != received.sender:
        raise ProtocolError(
            f"Hello names {greeting.node!r} but the batch comes from {received.sender!r}"
        )
    return greeting
