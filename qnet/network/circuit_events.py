"""Messages, commands and deliveries of the circuit core (virtual circuits, swapping, tracking).

Three families cross the core's boundary, each with a marker base so a driver can dispatch on
``isinstance``:

- ``CircuitMessage``: classical messages to the circuit core of a neighbour on the circuit's
  path (setup, accept, reject, teardown; tracking of swapped pairs; discards; completions; pause
  and resume).
  Plain values with ``to_dict``/``message_from_dict`` so any transport can carry them.
- commands for the node: ``ToPeer`` (a message for a neighbour), ``LinkCreate``/``LinkCancel``
  (link-layer requests on one of the node's links), and the physical layer's ``Gates``,
  ``MeasureQubit`` and ``Free`` (from ``qnet.link.events``).
- ``CircuitEvent``: deliveries to the layer above (``CircuitOpened``, ``CircuitIncoming``,
  ``EndToEndPair``, ``CircuitClosed``).

A circuit is named by ``(head, circuit)``: the node that opened it and the number it gave it
there. Pair sequence numbers in messages are the link layer's herald sequences on the link the
message crosses, which both ends of that link know; ``head_seq`` is the sequence of the head's
link pair, the name of an end-to-end pair until it completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from qnet.errors import ProtocolError
from qnet.link.events import CreateRequest
from qnet.records import from_plain, to_plain

CircuitId = tuple[str, int]

#: Link-layer ``purpose`` values at or above this belong to the network layer (circuit labels);
#: link-layer users get the ones below.
NETWORK_PURPOSE_BASE = 1 << 40


class CloseCode(Enum):
    """Why a circuit ended."""

    #: Every requested pair was delivered.
    COMPLETED = "completed"
    #: An end closed it.
    CLOSED = "closed"
    #: No route, or a node or link on the path went away.
    UNREACHABLE = "unreachable"
    #: The fidelity target cannot be met on this path.
    UNSUPPORTED = "unsupported"
    #: A node on the path has no memory left to reserve.
    NO_MEMORY = "no_memory"
    #: Setup got no answer in time.
    TIMEOUT = "timeout"
    #: A node refused it (e.g. it is not on the path it names).
    DENIED = "denied"


# -- peer messages ----------------------------------------------------------------------------

_MESSAGE_TYPES: dict[str, type[CircuitMessage]] = {}


class CircuitMessage:
    """Marker base of messages between the circuit cores of neighbours on a path."""

    __slots__ = ()
    type_name: ClassVar[str] = ""
    # Every message names its circuit (declared here for the type checker only).
    head: str
    circuit: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _MESSAGE_TYPES[cls.type_name] = cls

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, **to_plain(self)}

    @property
    def circuit_id(self) -> CircuitId:
        return (self.head, self.circuit)


def message_from_dict(data: dict[str, Any]) -> CircuitMessage:
    """Rebuild a message from ``to_dict`` output; anything malformed is a ProtocolError."""
    try:
        cls = _MESSAGE_TYPES[data["type"]]
    except (KeyError, TypeError):
        raise ProtocolError(f"unknown circuit message type in {data!r}") from None
    return from_plain(cls, f"circuit {cls.type_name}", data)


@dataclass(frozen=True, slots=True)
class CircuitSetup(CircuitMessage):
    """First pass, head → tail, hop by hop: each hop reserves memory, adds its capabilities
    (entries ``i`` of the tuples are those of ``path[i]``) and passes it on."""

    type_name: ClassVar[str] = "circuit_setup"
    head: str
    circuit: int
    #: Every node of the circuit, head first.
    path: tuple[str, ...]
    #: End-to-end fidelity the pairs must have at delivery.
    min_fidelity: float
    #: Pairs wanted; 0 for a stream until closed.
    number: int
    #: The sender's link-layer ``purpose`` for its pairs on the link to the receiver.
    label: int
    #: Memory qubits each hop so far had free after reserving for this circuit (the rest of
    #: a hop's capabilities, its noise and its links, is in the topology every node has).
    memory_free: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CircuitAccept(CircuitMessage):
    """Second pass, tail → head: the tail's plan; each hop takes its part and passes it on."""

    type_name: ClassVar[str] = "circuit_accept"
    head: str
    circuit: int
    #: Fidelity target of each link, in path order.
    link_fidelity: tuple[float, ...]
    #: An unswapped pair older than this (since its link delivered it) is discarded.
    cutoff_ns: int


@dataclass(frozen=True, slots=True)
class CircuitReject(CircuitMessage):
    """Towards the head from the hop that refused; every hop on the way releases."""

    type_name: ClassVar[str] = "circuit_reject"
    head: str
    circuit: int
    code: str
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitTeardown(CircuitMessage):
    """Along the path, away from whoever ended the circuit; every hop frees what it holds."""

    type_name: ClassVar[str] = "circuit_teardown"
    head: str
    circuit: int
    code: str
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class PairTrack(CircuitMessage):
    """Towards the tail: the pair that ends in link pair ``seq`` of the receiver's upstream
    link, from the head's link pair ``head_seq``, is in Bell state ``nominal`` (the XOR of every
    link pair's state and swap outcome on the way: the Pauli frame), with error ``weights``
    relative to it. The weights count every noise so far except the memory of the two live
    ends after their reference times: the head's qubit after ``head_time_ns``, the receiver's
    after ``far_time_ns`` (memory noise commutes with the rest, so each node adds its own)."""

    type_name: ClassVar[str] = "pair_track"
    head: str
    circuit: int
    seq: int
    head_seq: int
    nominal: int
    weights: tuple[float, ...]
    head_time_ns: int
    far_time_ns: int


@dataclass(frozen=True, slots=True)
class ChainDiscard(CircuitMessage):
    """The pair that link pair ``seq`` (of the link this message crosses) belongs to is gone:
    free it, or pass the discard on past the swap that joined it."""

    type_name: ClassVar[str] = "chain_discard"
    head: str
    circuit: int
    seq: int


@dataclass(frozen=True, slots=True)
class PairComplete(CircuitMessage):
    """Towards the head: the tail delivered the pair of ``head_seq`` as end-to-end pair
    ``index``, corrected to Φ+, with error ``weights`` at ``time_ns``."""

    type_name: ClassVar[str] = "pair_complete"
    head: str
    circuit: int
    head_seq: int
    index: int
    weights: tuple[float, ...]
    time_ns: int


@dataclass(frozen=True, slots=True)
class CircuitPause(CircuitMessage):
    """Along the path, away from the end that paused the circuit (``CircuitCore.pause``):
    the end on the sender's side wants no more pairs for now. Each hop stops its link
    requests for the circuit and passes it on; pairs already made still complete or are
    discarded as usual."""

    type_name: ClassVar[str] = "circuit_pause"
    head: str
    circuit: int


@dataclass(frozen=True, slots=True)
class CircuitResume(CircuitMessage):
    """Along the path, away from the end that resumed the circuit: that end's pause is over;
    each hop that no end holds paused asks its link for pairs again."""

    type_name: ClassVar[str] = "circuit_resume"
    head: str
    circuit: int


# -- commands ---------------------------------------------------------------------------------


class CircuitCommand:
    """Marker base: work for the node driver (besides physical commands)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ToPeer(CircuitCommand):
    peer: str
    message: CircuitMessage


@dataclass(frozen=True, slots=True)
class LinkCreate(CircuitCommand):
    """Ask the link layer for pairs with ``request.remote``; its OKs and ERRs come back
    through ``on_link_pair``/``on_link_error`` (they carry ``request.purpose``)."""

    request: CreateRequest


@dataclass(frozen=True, slots=True)
class LinkCancel(CircuitCommand):
    """Stop the link-layer requests this node made with ``purpose`` towards ``peer`` (the
    latest one, or request ``create_id`` when given)."""

    peer: str
    purpose: int
    create_id: int | None = None


# -- deliveries -------------------------------------------------------------------------------


class CircuitEvent:
    """Marker base: an event for the layer above."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CircuitOpened(CircuitEvent):
    """At the head: every hop accepted; pairs will follow."""

    circuit_id: CircuitId
    path: tuple[str, ...]
    link_fidelity: tuple[float, ...]
    cutoff_ns: int


@dataclass(frozen=True, slots=True)
class CircuitIncoming(CircuitEvent):
    """At the tail: a circuit ending here was accepted; its pairs will follow."""

    circuit_id: CircuitId
    path: tuple[str, ...]
    min_fidelity: float
    number: int


@dataclass(frozen=True, slots=True)
class EndToEndPair(CircuitEvent):
    """One end of end-to-end pair ``index`` of a circuit, corrected to Φ+. Both ends get the
    same ``index`` for the same pair, in index order; the qubit is the receiver's to free."""

    circuit_id: CircuitId
    index: int
    qubit: int
    #: The node holding the other half.
    remote: str
    fidelity_estimate: float
    estimate_time_ns: int
    #: Predicted weights on (Φ+, Ψ+, Φ−, Ψ−) at ``estimate_time_ns``.
    weights: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class CircuitClosed(CircuitEvent):
    """The circuit ended at this node; nothing more comes from it."""

    circuit_id: CircuitId
    code: CloseCode
    node: str
    reason: str
    delivered: int
