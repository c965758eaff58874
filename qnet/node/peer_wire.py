"""Conversions between the layers' peer messages and the Peer API's proto ``PeerMessage``.

The wire form mirrors the dataclasses field by field (same names; see proto/qnet/v1/peer.proto),
so one table says which dataclass travels in which ``PeerMessage`` case and the conversion is
generic. Both directions are total:

- ``to_wire`` encodes any registered message, or raises ``InvalidArgument`` (our own caller's
  mistake: a value the wire cannot carry, such as a negative id).
- ``from_wire`` decodes any proto ``PeerMessage`` into a dataclass, or raises ``ProtocolError``
  naming what is wrong (the peer broke the protocol): an empty message, a case this node does
  not know, a Hello out of place, a non-finite number. Semantic checks (is this kind known,
  is this message legal now) stay in the layer cores.

The field number of a ``PeerMessage`` case names its layer (``layer_of``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from enum import Enum
from typing import Any, Final, Protocol

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

from qnet.errors import InvalidArgument, ProtocolError, VersionMismatch
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
    message_from_dict,
)
from qnet.v1 import peer_pb2 as pb

#: The Peer API version this implementation speaks (``PeerBatch.protocol_version``).
PROTOCOL_VERSION = 1

ONEOF: Final = "body"
HELLO_CASE: Final = "hello"


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

#: Every dataclass that crosses the Peer API, in the order of its case numbers.
WIRE_TYPES: tuple[type[PeerMessage], ...] = (
    Ack,
    QueueAdd,
    PairAssign,
    PairDiscard,
    Purify,
    PurifyResult,
    Terminate,
    Expire,
    MemoryFull,
)

_BODY_FIELDS: dict[str, FieldDescriptor] = {
    f.name: f for f in pb.PeerMessage.DESCRIPTOR.oneofs_by_name[ONEOF].fields
}


def _case_name(cls: type[PeerMessage]) -> str:
    return f"link_{cls.type_name}"  # every wire type is a link message so far


def _check_mirrors(cls: type[PeerMessage], body: Descriptor) -> None:
    """The proto message must carry exactly the dataclass's fields (a bug here otherwise)."""
    ours = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    theirs = set(body.fields_by_name)
    if ours != theirs:
        raise AssertionError(
            f"{body.full_name} has fields {sorted(theirs)}, {cls.__name__} has {sorted(ours)}"
        )


def _build_tables() -> tuple[dict[type[PeerMessage], str], dict[str, type[PeerMessage]]]:
    case_of: dict[type[PeerMessage], str] = {}
    for cls in WIRE_TYPES:
        case = _case_name(cls)
        field = _BODY_FIELDS.get(case)
        if field is None or field.message_type is None:
            raise AssertionError(f"peer.proto has no PeerMessage case {case!r} for {cls.__name__}")
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


def layer_of(message: PeerMessage) -> Layer:
    """The layer a message belongs to (the one whose core handles it at the receiver)."""
    return layer_of_case(_case_of(message))


def _case_of(message: PeerMessage) -> str:
    try:
        return CASE_OF[type(message)]
    except KeyError:
        raise InvalidArgument(f"{type(message).__name__} has no Peer API wire form") from None


# --- dataclass -> proto ----------------------------------------------------------------------


def to_wire(message: PeerMessage) -> pb.PeerMessage:
    """Encode one message; a value the wire cannot carry raises InvalidArgument naming it."""
    case = _case_of(message)
    body: Any = getattr(pb.PeerMessage(), case).__class__()
    for name, value in message.to_dict().items():
        if name == "type":
            continue
        try:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError("not a finite number")
            if isinstance(value, list):
                getattr(body, name).extend(value)
            else:
                setattr(body, name, value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"cannot encode {type(message).__name__}.{name} = {value!r} ({exc})"
            ) from None
    out = pb.PeerMessage()
    getattr(out, case).CopyFrom(body)
    return out


def hello(node: str, sequence: int, recipient: str = "") -> pb.PeerMessage:
    return pb.PeerMessage(hello=pb.Hello(node=node, sequence=sequence, recipient=recipient))


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


def from_wire(message: pb.PeerMessage) -> PeerMessage:
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
    body = getattr(message, case)
    data: dict[str, Any] = {"type": cls.type_name}
    for field in body.DESCRIPTOR.fields:
        value = getattr(body, field.name)
        data[field.name] = list(value) if field.is_repeated else value
    return message_from_dict(data)


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
