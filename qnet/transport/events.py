"""Messages, commands and events of the transport core, all frozen value types.

Three families cross the core's boundary, each with a marker base so a driver can dispatch on
``isinstance``:

- ``TransportMessage``: classical messages to the transport core of the node at the other end
  of a connection (carried end to end by the driver, e.g. as network datagrams). Plain values
  with ``to_dict``/``message_from_dict``; the core survives their loss, duplication, reordering
  and delay. ``RecordMessage``s (``seq`` > 0) are delivered reliably and in order within one
  direction of a connection; the others (handshake, ``Ack``, ``Reset``) are not sequenced.
- ``TransportCommand``: work for the driver: ``SendTo`` a peer, ``OpenCircuit``/``CloseCircuit``
  with the network layer, and the physical commands ``BellMeasure``, ``MeasurePair``,
  ``Correct`` and ``Free``. Each physical command carries a ``tag``; the two measuring ones are
  answered with ``TransportCore.on_measured(tag, outcomes, now)``.
- ``TransportEvent``: deliveries to the application API, each naming its connection.

Every message names both ends' connection ids (``dst_conn``: the receiver's, ``src_conn``: the
sender's); ``Syn`` has only ``src_conn`` since the receiver's does not exist yet. An id is
local to a node and never reused by that node's core, so together with the sender's node name
it tells connections, and incarnations of a connection between the same ports, apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from qnet.errors import ERROR_TYPES, ProtocolError, QnetError
from qnet.network.circuit_events import CircuitId
from qnet.physical.gates import Basis
from qnet.records import from_plain, to_plain

ConnId = int


class PairUse(Enum):
    """What an end-to-end pair of a connection is for. The accepting end decides each index's
    use (it holds every pair first: it is the circuit's tail) and tells the connecting end in
    ``PairUses``; the wire carries the values."""

    #: Nobody wants it: both ends free their halves.
    RELEASE = 0
    #: The next pair of the ``epr`` stream at both ends.
    EPR = 1
    #: The next pair of the measure-directly stream: both ends measure it on arrival.
    MEASURE = 2
    #: Teleports a qubit from the connecting end to the accepting end.
    FROM_CONNECTOR = 3
    #: Teleports a qubit from the accepting end to the connecting end.
    FROM_ACCEPTOR = 4


# -- peer messages ----------------------------------------------------------------------------

_MESSAGE_TYPES: dict[str, type[TransportMessage]] = {}


class TransportMessage:
    """Marker base of messages between the transport cores at the two ends of a connection."""

    __slots__ = ()
    type_name: ClassVar[str] = ""
    # Every message names the sender's connection (declared here for the type checker only).
    src_conn: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _MESSAGE_TYPES[cls.type_name] = cls

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, **to_plain(self)}


class AddressedMessage(TransportMessage):
    """A message for an existing connection at the receiver (all but ``Syn``)."""

    __slots__ = ()
    dst_conn: int


class RecordMessage(AddressedMessage):
    """One record of a direction's reliable, ordered stream: numbered from 1 with no gaps,
    acknowledged cumulatively by ``Ack``, retransmitted until then, handed to the receiving
    core once, in order."""

    __slots__ = ()
    seq: int


def message_from_dict(data: dict[str, Any]) -> TransportMessage:
    """Rebuild a message from ``to_dict`` output; anything malformed is a ProtocolError."""
    try:
        cls = _MESSAGE_TYPES[data["type"]]
    except (KeyError, TypeError):
        raise ProtocolError(f"unknown transport message type in {data!r}") from None
    return from_plain(cls, f"transport {cls.type_name}", data)


@dataclass(frozen=True, slots=True)
class Syn(TransportMessage):
    """Connector → acceptor: open a connection to ``dst_port`` from ``src_port``."""

    type_name: ClassVar[str] = "syn"
    src_conn: int
    src_port: int
    dst_port: int
    #: Fidelity the connection's end-to-end pairs must have at delivery.
    min_fidelity: float
    #: Pairs of the ``epr`` stream the connector holds for its application ahead of demand.
    pair_window: int
    #: Bytes of complete, unread messages the connector buffers for its application.
    data_window: int


@dataclass(frozen=True, slots=True)
class SynAck(AddressedMessage):
    """Acceptor → connector: a listener took the connection; the connector opens the circuit."""

    type_name: ClassVar[str] = "syn_ack"
    dst_conn: int
    src_conn: int
    data_window: int


@dataclass(frozen=True, slots=True)
class HandshakeAck(AddressedMessage):
    """Connector → acceptor: the circuit (``circuit_head``, ``circuit_number``) is open and
    carries this connection's pairs; the acceptor binds it. Not acknowledged itself: the
    acceptor repeats ``SynAck`` until it arrives, and the connector answers each copy."""

    type_name: ClassVar[str] = "handshake_ack"
    dst_conn: int
    src_conn: int
    circuit_head: str
    circuit_number: int


@dataclass(frozen=True, slots=True)
class Reset(AddressedMessage):
    """The sender ended the connection abnormally (or knows no such connection, or no
    listener): the receiver fails it with ``error`` (a ``qnet.errors`` type name) raised by
    ``node``. ``src_conn`` is 0 when the sender had no connection. Never answered."""

    type_name: ClassVar[str] = "reset"
    dst_conn: int
    src_conn: int
    error: str
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ack(AddressedMessage):
    """Every record below ``next_seq`` arrived, and those in ``selective`` above it (so the
    sender retransmits only the holes). Sent for every record received, duplicates included."""

    type_name: ClassVar[str] = "ack"
    dst_conn: int
    src_conn: int
    next_seq: int
    selective: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Segment(RecordMessage):
    """A piece of a classical message; ``last`` = 1 on its final piece (an empty message is
    one empty last segment)."""

    type_name: ClassVar[str] = "segment"
    dst_conn: int
    src_conn: int
    seq: int
    payload: bytes
    last: int


@dataclass(frozen=True, slots=True)
class Fin(RecordMessage):
    """The sender's output ends: no more messages or teleported qubits follow."""

    type_name: ClassVar[str] = "fin"
    dst_conn: int
    src_conn: int
    seq: int


@dataclass(frozen=True, slots=True)
class Window(RecordMessage):
    """Flow control of messages: the receiver of this record may send message bytes up to a
    total of ``data_limit`` (counted from the connection's start) and no further."""

    type_name: ClassVar[str] = "window"
    dst_conn: int
    src_conn: int
    seq: int
    data_limit: int


@dataclass(frozen=True, slots=True)
class PairDemand(RecordMessage):
    """Connector → acceptor, cumulative counts since the connection's start: the connector
    holds ``epr`` pairs up to ``epr_limit`` (pairs its application took + its window), its
    application asked for ``measures`` measure-directly pairs and for ``teleports`` pairs to
    teleport qubits with."""

    type_name: ClassVar[str] = "pair_demand"
    dst_conn: int
    src_conn: int
    seq: int
    epr_limit: int
    measures: int
    teleports: int


@dataclass(frozen=True, slots=True)
class PairUses(RecordMessage):
    """Acceptor → connector: the uses (``PairUse`` values) of pair indices ``first_index``,
    ``first_index`` + 1, …; consecutive records continue where the previous one stopped."""

    type_name: ClassVar[str] = "pair_uses"
    dst_conn: int
    src_conn: int
    seq: int
    first_index: int
    uses: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PairsEnd(RecordMessage):
    """Acceptor → connector: no further pair will be given to the ``epr`` or measure-directly
    streams (an end closed its output); teleportation goes on while an output is open."""

    type_name: ClassVar[str] = "pairs_end"
    dst_conn: int
    src_conn: int
    seq: int


@dataclass(frozen=True, slots=True)
class Teleport(RecordMessage):
    """The Bell measurement of a qubit with the sender's half of pair ``index``: the receiver
    applies X^x then Z^z to its half, which is then the qubit. x = z = -1: the measurement
    failed, the qubit is lost and the receiver frees its half. x = z = -2 (``pairs.RELEASED``):
    the sender gives back a pair it kept ready and did not use; the receiver frees its half."""

    type_name: ClassVar[str] = "teleport"
    dst_conn: int
    src_conn: int
    seq: int
    index: int
    x: int
    z: int


@dataclass(frozen=True, slots=True)
class EprRelease(RecordMessage):
    """Connector → acceptor: its application stopped taking epr pairs, and it took ``taken``;
    it takes no further one until ``EprCut`` answers. The acceptor then releases the pairs of
    the epr stream that neither application took, at both ends."""

    type_name: ClassVar[str] = "epr_release"
    dst_conn: int
    src_conn: int
    seq: int
    taken: int


@dataclass(frozen=True, slots=True)
class EprCut(RecordMessage):
    """Acceptor → connector: the epr stream's pairs from number ``first`` on (those assigned
    so far) are released at both ends; the stream goes on from ``first``."""

    type_name: ClassVar[str] = "epr_cut"
    dst_conn: int
    src_conn: int
    seq: int
    first: int


# -- commands ---------------------------------------------------------------------------------


class TransportCommand:
    """Marker base: work for the driver."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SendTo(TransportCommand):
    """Carry ``message`` to the transport core of ``node`` (best effort)."""

    node: str
    message: TransportMessage


@dataclass(frozen=True, slots=True)
class OpenCircuit(TransportCommand):
    """Open a circuit streaming end-to-end pairs (until closed) to ``remote`` for connection
    ``conn``; answer ``on_circuit_open(conn, circuit)`` or ``on_circuit_failed(conn, …)``."""

    conn: ConnId
    remote: str
    min_fidelity: float


@dataclass(frozen=True, slots=True)
class CloseCircuit(TransportCommand):
    """Close this circuit (it may have ended already: then do nothing)."""

    circuit: CircuitId


@dataclass(frozen=True, slots=True)
class PauseCircuit(TransportCommand):
    """Stop this circuit's pair generation for now (``CircuitHandle.pause``): its connection
    wants no pairs at either end and both windows are full. Pairs already on their way still
    arrive (and are freed). Only the allocating end asks, since it knows both ends' demand."""

    circuit: CircuitId


@dataclass(frozen=True, slots=True)
class ResumeCircuit(TransportCommand):
    """End an earlier ``PauseCircuit``: the connection wants pairs again."""

    circuit: CircuitId


class PhysicalCommand(TransportCommand):
    """Marker base: work on this node's qubits, in order with every other physical command
    and before any event emitted after it (so a corrected qubit is delivered corrected)."""

    __slots__ = ()
    tag: int


@dataclass(frozen=True, slots=True)
class BellMeasure(PhysicalCommand):
    """Teleportation's sender side: CNOT(qubit → pair_qubit), H(qubit), then measure both in
    Z; answer ``on_measured(tag, (outcome of qubit, outcome of pair_qubit), now)``, or an
    empty tuple if it failed. Both qubits are gone afterwards."""

    tag: int
    qubit: int
    pair_qubit: int


@dataclass(frozen=True, slots=True)
class MeasurePair(PhysicalCommand):
    """Measure (and so free) ``qubit`` in ``basis``; answer ``on_measured(tag, (outcome,),
    now)`` with 0 for the +1 eigenstate, or an empty tuple if it failed."""

    tag: int
    qubit: int
    basis: Basis


@dataclass(frozen=True, slots=True)
class Correct(PhysicalCommand):
    """Teleportation's receiver side: apply X^x, then Z^z, to ``qubit``. No answer."""

    tag: int
    qubit: int
    x: int
    z: int


@dataclass(frozen=True, slots=True)
class Free(PhysicalCommand):
    """Free these qubits. No answer."""

    tag: int
    qubits: tuple[int, ...]


# -- events -----------------------------------------------------------------------------------


class TransportEvent:
    """Marker base: an event for the application API, about connection ``conn``."""

    __slots__ = ()
    conn: ConnId


@dataclass(frozen=True, slots=True)
class ConnectionAccepted(TransportEvent):
    """Answers one ``accept(port)``: an established connection from ``remote``."""

    port: int
    conn: ConnId
    remote: str
    remote_port: int


@dataclass(frozen=True, slots=True)
class Connected(TransportEvent):
    """Answers ``connect``: the connection is established (its circuit is open)."""

    conn: ConnId
    local_port: int
    remote: str
    remote_port: int


@dataclass(frozen=True, slots=True)
class Data(TransportEvent):
    """Answers one ``recv``: the next classical message, whole."""

    conn: ConnId
    data: bytes


@dataclass(frozen=True, slots=True)
class EprPair(TransportEvent):
    """Answers one ``epr``: this end's half of the ``number``-th pair of the epr stream (both
    ends get the same circuit pair ``index`` as their ``number``-th), corrected to Φ+. The
    qubit is the application's now."""

    conn: ConnId
    number: int
    index: int
    qubit: int
    fidelity: float


@dataclass(frozen=True, slots=True)
class MeasuredPair(TransportEvent):
    """The ``number``-th outcome of the measure-directly stream, in order; -1 if the
    measurement failed."""

    conn: ConnId
    number: int
    index: int
    basis: Basis
    outcome: int


@dataclass(frozen=True, slots=True)
class QubitSent(TransportEvent):
    """The ``number``-th ``send_qubit`` went out: ``qubit`` was Bell-measured (and so is gone)
    and its bits are on their way. ``ok`` is False if the measurement failed (lost)."""

    conn: ConnId
    number: int
    qubit: int
    ok: bool


@dataclass(frozen=True, slots=True)
class QubitReceived(TransportEvent):
    """The next teleported qubit, corrected; the qubit is the application's now."""

    conn: ConnId
    number: int
    qubit: int


@dataclass(frozen=True, slots=True)
class PeerFinished(TransportEvent):
    """The peer closed its output: pending and later ``recv`` calls get end of stream, and no
    qubit will be received any more."""

    conn: ConnId


@dataclass(frozen=True, slots=True)
class PairsEnded(TransportEvent):
    """The pair streams ended: the newest ``epr_calls`` pending ``epr`` calls and the last
    ``measure_slots`` pending measure-directly outcomes will never come (older ones still
    do)."""

    conn: ConnId
    epr_calls: int
    measure_slots: int


@dataclass(frozen=True, slots=True)
class Closed(TransportEvent):
    """Both directions closed cleanly; nothing more comes on this connection."""

    conn: ConnId


@dataclass(frozen=True, slots=True)
class Error(TransportEvent):
    """The connection failed (``error`` raised by ``node``) and is gone. Every pending call
    on it fails with that error. ``returned_qubits`` are qubits passed to ``send_qubit`` that
    were never touched: the application's again. ``lost_qubits`` counts those whose Bell
    measurement had started: they are gone (freed by the measurement)."""

    conn: ConnId
    error: type[QnetError]
    node: str
    reason: str
    returned_qubits: tuple[int, ...] = ()
    lost_qubits: int = 0

    def exception(self) -> QnetError:
        return self.error(self.reason, node=self.node)


def error_type(name: str) -> type[QnetError]:
    """The ``qnet.errors`` type a ``Reset`` names (the base type for a name we do not know)."""
    return ERROR_TYPES.get(name, QnetError)


#: Everything ``TransportCore.pop_outputs`` returns.
Output = TransportCommand | TransportEvent
