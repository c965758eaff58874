"""Messages, outputs and values of the link-state routing core, all frozen value types.

Two families cross the core's boundary, each with a marker base class so a driver can
dispatch on ``isinstance``:

- ``RoutingMessage``: classical messages to the routing core of a neighbouring node. They are
  plain values (str, int, float, tuples of those, tuples of the small ``AdvertLink`` and
  ``AdvertHeader`` records) with ``to_dict``/``message_from_dict`` so any transport can carry
  them. The protocol survives their loss, duplication, reordering and delay.
- ``RoutingOutput``: what ``RoutingCore.pop_outputs`` returns: ``SendTo`` (a message for a
  neighbour), ``NeighbourUp``/``NeighbourDown``, ``RoutesChanged`` and ``RoutingConverged``.

``RouteEntry`` (one row of the entanglement routing table) and ``LinkMetrics`` (what the link
layer knows of one of this node's links) are the values the core takes and gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from qnet.errors import ProtocolError

# -- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkMetrics:
    """One link as the routing layer costs it: the rate at which it delivers pairs at the
    fidelity threshold and the fidelity they have then (``routing_spf.link_metrics`` gets
    both from the link layer's planner). A rate of 0 marks a link that cannot reach the
    threshold: it is advertised but never used."""

    #: Delivered pairs per second, at the operating point chosen for the threshold.
    rate_hz: float
    #: Fidelity of those pairs at delivery.
    fidelity: float


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One row of a node's entanglement routing table."""

    destination: str
    #: The neighbour to which requests for ``destination`` go first (``path[1]``).
    next_hop: str
    #: Every node on the route, this node first and ``destination`` last.
    path: tuple[str, ...]
    #: Sum over the path's links of seconds per Bell pair at the fidelity threshold.
    cost_s: float
    #: Expected end-to-end fidelity after swapping at every intermediate node (Werner
    #: composition of the links' fidelities, ``routing_spf.path_fidelity``).
    fidelity: float


# -- peer messages ----------------------------------------------------------------------------

_MESSAGE_TYPES: dict[str, type[RoutingMessage]] = {}


class RoutingMessage:
    """Marker base of messages between the routing cores of neighbouring nodes."""

    __slots__ = ()
    type_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _MESSAGE_TYPES[cls.type_name] = cls

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: tuples as lists, records as dicts, plus ``"type"``."""
        out: dict[str, Any] = {"type": self.type_name}
        out.update(_plain(self))
        return out


_FIELD_TYPES: dict[type, tuple[tuple[str, str], ...]] = {}


def _field_types(cls: type) -> tuple[tuple[str, str], ...]:
    """(name, annotation) of a dataclass's fields, cached: ``fields`` is slow on a hot path."""
    known = _FIELD_TYPES.get(cls)
    if known is None:
        known = _FIELD_TYPES[cls] = tuple((f.name, str(f.type)) for f in fields(cls))
    return known


def _plain(record: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, _ in _field_types(type(record)):
        value = getattr(record, name)
        if isinstance(value, tuple):
            value = [_plain(v) if isinstance(v, AdvertLink | AdvertHeader) else v for v in value]
        out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class AdvertLink:
    """One link in a link-state advert, as its origin measures it."""

    #: The node at the other end.
    peer: str
    #: ``LinkMetrics.rate_hz``: pairs per second at the fidelity threshold (0: unusable).
    rate_hz: float
    #: ``LinkMetrics.fidelity``: fidelity of those pairs.
    fidelity: float


@dataclass(frozen=True, slots=True)
class AdvertHeader:
    """Names one advert (origin and sequence number) without its body."""

    origin: str
    seq: int
    #: Age of the advert when the header was written.
    age_ns: int


@dataclass(frozen=True, slots=True)
class RoutingHello(RoutingMessage):
    """Sent every hello interval to every neighbour, and at once when a neighbour's state
    changes. ``heard`` makes adjacency two-way: a neighbour is up only once its hello lists
    us. The three settings must be equal at both ends (otherwise ProtocolError)."""

    type_name: ClassVar[str] = "routing_hello"
    node: str
    #: Counts the sender's hellos from 1 (for traces; not used for ordering).
    seq: int
    #: Neighbours whose hellos the sender hears (its neighbours not DOWN), sorted.
    heard: tuple[str, ...]
    hello_interval_ns: int
    dead_interval_ns: int
    fidelity_threshold: float


@dataclass(frozen=True, slots=True)
class LinkStateAdvert(RoutingMessage):
    """``origin``'s links to its up neighbours and its memory, flooded to every node.

    A higher ``seq`` from the same origin is newer. ``age_ns`` is the advert's age when it was
    sent (the origin sends 0; each hop adds the time the advert spent in its database), so no
    clocks need to agree; an advert whose age reaches ``max_age_ns`` is dropped.
    """

    type_name: ClassVar[str] = "link_state_advert"
    origin: str
    seq: int
    age_ns: int
    #: Memory qubits of the origin: a node with fewer than 2 cannot swap, so carries no transit.
    memory_qubits: int
    #: Sorted by peer.
    links: tuple[AdvertLink, ...]


@dataclass(frozen=True, slots=True)
class AdvertAck(RoutingMessage):
    """``node`` received the advert (``origin``, ``seq``) or a newer one; the sender stops
    retransmitting it. Not itself acknowledged."""

    type_name: ClassVar[str] = "advert_ack"
    node: str
    origin: str
    seq: int


@dataclass(frozen=True, slots=True)
class DatabaseRequest(RoutingMessage):
    """Sent when a neighbour comes up: "here is what I hold; send me anything newer".
    Retransmitted until the matching ``DatabaseDescription`` arrives."""

    type_name: ClassVar[str] = "database_request"
    node: str
    #: Increases with every request the sender makes (to any neighbour).
    request_id: int
    headers: tuple[AdvertHeader, ...]


@dataclass(frozen=True, slots=True)
class DatabaseDescription(RoutingMessage):
    """Answer to a ``DatabaseRequest``: the adverts the responder is sending (reliably, just
    after this) because they are newer than the requester's. Once the requester holds all of
    them (or they have aged out), it is synchronised with this neighbour."""

    type_name: ClassVar[str] = "database_description"
    node: str
    request_id: int
    headers: tuple[AdvertHeader, ...]


def message_from_dict(data: dict[str, Any]) -> RoutingMessage:
    """Rebuild a message from ``to_dict`` output; anything malformed is a ProtocolError."""
    try:
        cls = _MESSAGE_TYPES[data["type"]]
    except (KeyError, TypeError):
        raise ProtocolError(f"unknown routing message type in {data!r}") from None
    message = cls(**_fields_of(cls, cls.type_name, data))
    validate(message)
    return message


def _fields_of(cls: type, kind: str, data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(f"routing {kind}: expected a record, got {data!r}")
    kwargs: dict[str, Any] = {}
    for name, annotation in _field_types(cls):
        if name not in data:
            raise ProtocolError(f"routing {kind} lacks field {name!r}")
        kwargs[name] = _convert(kind, name, annotation, data[name])
    return kwargs


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _convert(kind: str, name: str, annotation: str, value: Any) -> Any:
    """Check one field against its annotation (a string under postponed evaluation)."""
    ok: bool
    if annotation == "int":
        ok = _is_int(value)
    elif annotation == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif annotation == "str":
        ok = isinstance(value, str)
    elif annotation == "tuple[str, ...]":
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif annotation in ("tuple[AdvertLink, ...]", "tuple[AdvertHeader, ...]"):
        ok = isinstance(value, list | tuple)
        if ok:
            record = AdvertLink if "AdvertLink" in annotation else AdvertHeader
            value = tuple(record(**_fields_of(record, kind, v)) for v in value)
    else:
        raise AssertionError(f"no converter for {annotation}")  # a bug here, not the peer's
    if not ok:
        raise ProtocolError(f"routing {kind} message has a bad {name!r}: {value!r}")
    return value


def validate(message: RoutingMessage) -> None:
    """Semantic checks of a received message (ranges, uniqueness); ProtocolError if broken.
    ``message_from_dict`` runs them, and the core runs them on every message it receives."""
    kind = message.type_name
    bad: str | None = None
    if isinstance(message, RoutingHello):
        if message.seq < 1 or message.hello_interval_ns < 1 or message.dead_interval_ns < 1:
            bad = "seq and intervals must be positive"
        elif not 0.0 <= message.fidelity_threshold <= 1.0:
            bad = f"fidelity_threshold {message.fidelity_threshold!r} is not in [0, 1]"
    elif isinstance(message, LinkStateAdvert):
        bad = _advert_problem(message)
    elif isinstance(message, AdvertAck):
        bad = "seq must be positive" if message.seq < 1 else None
    elif isinstance(message, DatabaseRequest | DatabaseDescription):
        origins = [h.origin for h in message.headers]
        if len(set(origins)) != len(origins):
            bad = "headers name an origin twice"
        elif any(h.seq < 1 or h.age_ns < 0 for h in message.headers):
            bad = "a header has a non-positive seq or a negative age"
    if bad is not None:
        raise ProtocolError(f"routing {kind} message: {bad}")


def _advert_problem(advert: LinkStateAdvert) -> str | None:
    if advert.seq < 1 or advert.age_ns < 0 or advert.memory_qubits < 0:
        return "seq must be positive, age and memory_qubits not negative"
    peers = [link.peer for link in advert.links]
    if len(set(peers)) != len(peers) or advert.origin in peers:
        return f"links of {advert.origin!r} name a peer twice or the origin itself"
    for link in advert.links:
        if not (math.isfinite(link.rate_hz) and link.rate_hz >= 0.0):
            return f"link to {link.peer!r} has rate {link.rate_hz!r}"
        if not (math.isfinite(link.fidelity) and 0.0 <= link.fidelity <= 1.0):
            return f"link to {link.peer!r} has fidelity {link.fidelity!r}"
    return None


# -- outputs ----------------------------------------------------------------------------------


class RoutingOutput:
    """Marker base: everything ``RoutingCore.pop_outputs`` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SendTo(RoutingOutput):
    """Send ``message`` to neighbour ``peer`` (best effort: the protocol repairs loss)."""

    peer: str
    message: RoutingMessage


@dataclass(frozen=True, slots=True)
class NeighbourUp(RoutingOutput):
    """Hellos from ``peer`` now list this node: the adjacency is two-way."""

    peer: str


@dataclass(frozen=True, slots=True)
class NeighbourDown(RoutingOutput):
    """``peer`` is no longer a two-way neighbour; ``reason`` says why."""

    peer: str
    #: "dead interval expired", "link down" or "its hello no longer lists us".
    reason: str


@dataclass(frozen=True, slots=True)
class RoutesChanged(RoutingOutput):
    """The routing table changed; ``routes`` is the whole new table, by destination."""

    routes: tuple[RouteEntry, ...]


@dataclass(frozen=True, slots=True)
class RoutingConverged(RoutingOutput):
    """Emitted once: from now on ``route`` answers (a readiness signal for the driver)."""

    at_ns: int
