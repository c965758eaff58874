"""Events, commands and peer messages of the link layer (EGP), all frozen value types.

Three families cross the core's boundary, each with a marker base class so a driver can
dispatch on ``isinstance``:

- ``UpperEvent``: deliveries to the layer above (``PairOk``, ``CreateErr``).
- ``PhysicalCommand``: work for the node's physical layer (``Arm``, ``Disarm``,
  ``MeasureQubit``, ``Gates``, ``Free``); each carries a ``tag`` so results can be matched.
- ``PeerMessage``: classical messages to the EGP core at the other end of the link. They are
  plain values (str, int, float, tuples of those) with ``to_dict``/``message_from_dict`` so any
  transport can carry them; the core survives their loss, duplication, reordering and delay.

Requests are named by ``(origin, create_id)``: the node that issued the CREATE and the id its
core gave it. That key needs no coordination, so the slave can refer to its own requests before
the master has seen them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar

from qnet.errors import ProtocolError
from qnet.physical.gates import Basis, GateName


class Kind(Enum):
    """What happens to each pair: kept in memory for the caller, or measured at once."""

    KEEP = "keep"
    MEASURE = "measure"


class BasisChoice(Enum):
    """Measurement basis of a MEASURE request; RANDOM draws Z, X or Y per pair and end."""

    Z = "Z"
    X = "X"
    Y = "Y"
    RANDOM = "random"


class ErrorCode(Enum):
    """Why a request ended without all its pairs (Dahlberg et al. 2019, table 1)."""

    #: The fidelity cannot be reached on this link: answered at once, before queueing, or
    #: later by the master when pairs keep falling short of it at delivery (the plan was
    #: wrong, e.g. memories decohere faster than the model says).
    UNSUPPORTED = "unsupported"
    #: ``max_time_ns`` passed before every pair was delivered.
    TIMEOUT = "timeout"
    #: Pairs already promised (OK at one end) were lost at the other end.
    EXPIRED = "expired"
    #: A node had no free memory qubit for the request.
    NO_MEMORY = "no_memory"
    #: The master refused the request (its queue is full).
    DENIED = "denied"
    #: The origin withdrew the request (``EgpCore.cancel``); the master ended it.
    CANCELLED = "cancelled"
    #: The other end's daemon went away (``EgpCore.peer_lost``): each end ends every request
    #: it had with that peer by itself, since nothing more can be agreed.
    UNREACHABLE = "unreachable"


# -- upper layer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A CREATE from the layer above, for ``number`` pairs with ``remote``."""

    #: The node at the other end of this link.
    remote: str
    #: Pairs wanted, at least 1.
    number: int = 1
    #: Minimum fidelity with the reported Bell state at delivery; 0 accepts any pair.
    min_fidelity: float = 0.0
    #: Time allowed from the CREATE to the last pair; 0 means no limit.
    max_time_ns: int = 0
    #: KEEP (create and keep) or MEASURE (measure directly).
    kind: Kind = Kind.KEEP
    #: Basis for MEASURE requests; ignored for KEEP.
    basis: BasisChoice = BasisChoice.Z
    #: Opaque tag for the layer above (e.g. a circuit or port), echoed in every OK.
    purpose: int = 0
    #: Larger is served first; equal priorities in arrival order at the master.
    priority: int = 0
    #: Left None by the caller: the core assigns it and returns it from ``create``.
    create_id: int | None = None


class UpperEvent:
    """Marker base: an event for the layer above."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class PairOk(UpperEvent):
    """One delivered pair. Both ends emit it with the same ``pair_id`` and ``bell_index``."""

    #: The request, named by the node that issued it and its id there.
    origin: str
    create_id: int
    #: ``purpose`` of the request, so the non-originating end can route the pair.
    purpose: int
    #: (link id, herald sequence of the delivered pair), equal at both ends.
    pair_id: tuple[str, int]
    kind: Kind
    #: The local half (KEEP): the layer above owns it now and must free it.
    qubit: int | None
    #: Measurement outcome and basis (MEASURE), 0 being the +1 eigenstate.
    outcome: int | None
    basis: Basis | None
    #: The pair's Bell state, x + 2z for (I ⊗ X^x Z^z)|Φ+⟩ (master's qubit first).
    bell_index: int
    #: Estimated fidelity with that Bell state at ``estimate_time_ns``.
    fidelity_estimate: float
    estimate_time_ns: int
    #: 0-based position of this pair within its request.
    index_in_request: int
    #: Predicted weights on the four Bell states (by Bell index) at ``estimate_time_ns``;
    #: the network layer tracks swapped pairs from these.
    weights: tuple[float, float, float, float] | None = None


@dataclass(frozen=True, slots=True)
class CreateErr(UpperEvent):
    """A request ended early; both ends emit it (except the UNSUPPORTED that ``create``
    answers at once, before queueing, which is local)."""

    origin: str
    create_id: int
    code: ErrorCode
    #: Herald sequences the error concerns (inclusive), or None: for EXPIRED the pairs lost
    #: after their OK; otherwise the span of pairs the request consumed, if any.
    seq_range: tuple[int, int] | None
    reason: str
    #: ``purpose`` of the request, so the non-originating end can route the error.
    purpose: int = 0


# -- physical layer ---------------------------------------------------------------------------


class PhysicalCommand:
    """Marker base: work for the node's physical layer, matched to results by ``tag``."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Arm(PhysicalCommand):
    """Allocate ``count`` memory qubits and arm them for generation on this link. Heralds then
    consume armed qubits in order. If they cannot be allocated, call ``on_no_memory``."""

    tag: int
    count: int
    #: Single-click bright-state population α for these attempts (ignored by double-click;
    #: the backend uses the master's, i.e. the lower-named node's, setting).
    bright_state: float


@dataclass(frozen=True, slots=True)
class Disarm(PhysicalCommand):
    """Stop generation on this link and free every qubit that is still armed (not heralded)."""

    tag: int


@dataclass(frozen=True, slots=True)
class MeasureQubit(PhysicalCommand):
    """Measure (and so free) ``qubit`` in ``basis``; answer with ``on_measured(tag, …)``."""

    tag: int
    qubit: int
    basis: Basis


@dataclass(frozen=True, slots=True)
class Gates(PhysicalCommand):
    """Apply these gates in order, before any later command. No answer is expected."""

    tag: int
    #: (gate, qubits, angle in radians — used by rotations only).
    ops: tuple[tuple[GateName, tuple[int, ...], float], ...]


@dataclass(frozen=True, slots=True)
class Free(PhysicalCommand):
    """Free these (heralded, unarmed) qubits."""

    tag: int
    qubits: tuple[int, ...]


# -- peer messages ----------------------------------------------------------------------------

_MESSAGE_TYPES: dict[str, type[PeerMessage]] = {}


class PeerMessage:
    """Marker base of messages between the two EGP cores of a link.

    Every message but ``Ack`` carries ``msg_id``, unique per sender, and is retransmitted until
    acknowledged; the receiver acknowledges every copy and acts on the first.
    """

    __slots__ = ()
    type_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            _MESSAGE_TYPES[cls.type_name] = cls

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: enums by value, tuples as lists, plus ``"type"``."""
        out: dict[str, Any] = {"type": self.type_name}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def message_from_dict(data: dict[str, Any]) -> PeerMessage:
    """Rebuild a message from ``to_dict`` output; anything malformed is a ProtocolError."""
    try:
        cls = _MESSAGE_TYPES[data["type"]]
    except (KeyError, TypeError):
        raise ProtocolError(f"unknown EGP message type in {data!r}") from None
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            raise ProtocolError(f"EGP {cls.type_name} message lacks field {f.name!r}")
        kwargs[f.name] = _convert(cls.type_name, f.name, str(f.type), data[f.name])
    return cls(**kwargs)


def _convert(kind: str, name: str, annotation: str, value: Any) -> Any:
    """Check one field against its annotation (a string under postponed evaluation)."""
    ok: bool
    if annotation == "ErrorCode":
        try:
            return ErrorCode(value)
        except ValueError:
            ok = False
    elif annotation == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif annotation == "str":
        ok = isinstance(value, str)
    elif annotation == "tuple[int, ...]":
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        value = tuple(value) if ok else value
    else:
        raise AssertionError(f"no converter for {annotation}")  # a bug here, not the peer's
    if not ok:
        raise ProtocolError(f"EGP {kind} message has a bad {name!r}: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Ack(PeerMessage):
    """Acknowledges messages by id. Not itself acknowledged: a lost Ack means a retransmission,
    which is acknowledged again."""

    type_name: ClassVar[str] = "ack"
    msg_ids: tuple[int, ...]
    #: How long the receiver held each acknowledgement before sending it (``EgpConfig.
    #: ack_delay_ns``), in the order of ``msg_ids``; the sender takes it out of its round-trip
    #: sample (QUIC's ack delay). Empty: none held.
    delays_ns: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueAdd(PeerMessage):
    """Distributed queue ADD: a request entering the queue, sent by its origin. The master
    serves a request of its own only once the slave has acknowledged its ADD."""

    type_name: ClassVar[str] = "queue_add"
    msg_id: int
    origin: str
    create_id: int
    number: int
    min_fidelity: float
    #: Absolute time (shared physical clock) after which no pair is assigned; -1 for none.
    deadline_ns: int
    kind: str
    basis: str
    purpose: int
    priority: int


@dataclass(frozen=True, slots=True)
class PairAssign(PeerMessage):
    """Master → slave: herald ``seq`` is pair ``index`` of the request; deliver it."""

    type_name: ClassVar[str] = "pair_assign"
    msg_id: int
    seq: int
    origin: str
    create_id: int
    index: int
    #: Bright state the pair was generated with (the master's setting rules the link).
    bright_state: float


@dataclass(frozen=True, slots=True)
class PairDiscard(PeerMessage):
    """Master → slave: these herald sequences serve no request; free their qubits."""

    type_name: ClassVar[str] = "pair_discard"
    msg_id: int
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Purify(PeerMessage):
    """Master → slave: run one DEJMPS round on (keep, sacrifice); the master has measured its
    half of the sacrifice pair and reports its outcome and when it did its operations."""

    type_name: ClassVar[str] = "purify"
    msg_id: int
    keep_seq: int
    sacrifice_seq: int
    keep_bright_state: float
    sacrifice_bright_state: float
    outcome: int
    op_time_ns: int


@dataclass(frozen=True, slots=True)
class PurifyResult(PeerMessage):
    """Slave → master: the slave's outcome (-1: it had lost a pair, so the round fails) and
    when it did its operations. Both ends then know whether the round succeeded."""

    type_name: ClassVar[str] = "purify_result"
    msg_id: int
    keep_seq: int
    sacrifice_seq: int
    outcome: int
    op_time_ns: int


@dataclass(frozen=True, slots=True)
class Terminate(PeerMessage):
    """Master → slave: the request ends. The slave first delivers the ``keep_count`` pairs
    assigned before (they may still be in flight), then reports ``code`` (if any)."""

    type_name: ClassVar[str] = "terminate"
    msg_id: int
    origin: str
    create_id: int
    #: An ErrorCode value, or "" when the request completed.
    code: str
    seq_first: int
    seq_last: int
    keep_count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Expire(PeerMessage):
    """Slave → master: the slave lost its half of pair ``index`` (herald ``seq``), which the
    master has already delivered; the master ends the request with EXPIRED."""

    type_name: ClassVar[str] = "expire"
    msg_id: int
    origin: str
    create_id: int
    index: int
    seq: int


@dataclass(frozen=True, slots=True)
class Cancel(PeerMessage):
    """Slave → master: the slave, as origin, withdraws its request. The master decides, as for
    every other end: it terminates the request with CANCELLED (``Terminate``), unless the
    request has already ended."""

    type_name: ClassVar[str] = "cancel"
    msg_id: int
    origin: str
    create_id: int


@dataclass(frozen=True, slots=True)
class MemoryFull(PeerMessage):
    """Slave → master: the slave could not allocate memory to arm, and has not since its
    last herald, for ``full_for_ns``; the master fails the request it is serving with
    NO_MEMORY once memory has stayed full for its memory wait."""

    type_name: ClassVar[str] = "memory_full"
    msg_id: int
    #: How long the slave's memory has been full (0: from now). A slave reports only a streak
    #: that has lasted half the memory wait: shorter ones, the common case at a busy
    #: repeater, cannot fail a request, and reporting each would double the link's messages.
    full_for_ns: int = 0


#: Everything ``pop_outputs`` returns.
Output = UpperEvent | PhysicalCommand | PeerMessage
