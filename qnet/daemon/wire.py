"""Conversions between node.proto messages and the link layer's and transport's types.

Inbound messages pass ``check_version`` first; every enum and number is checked here, so the
link layer only sees well-formed requests, and a bad one is an ``InvalidArgument`` that names
the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from qnet.channel import wire as channel_wire
from qnet.errors import InvalidArgument, VersionMismatch
from qnet.link.events import BasisChoice, CreateErr, CreateRequest, ErrorCode, Kind, PairOk
from qnet.network.circuit_events import CircuitClosed, CircuitId, CloseCode, EndToEndPair
from qnet.network.neighbours import NeighbourState
from qnet.node.grpc_transport import PeerStats
from qnet.node.routing_driver import NodeRouting
from qnet.physical.gates import Basis
from qnet.v1 import channel_pb2 as channel_pb
from qnet.v1 import node_pb2 as pb

#: The Node API version this implementation speaks.
PROTOCOL_VERSION = 1
V = PROTOCOL_VERSION

#: Largest integer the link layer's peer messages carry (int64 on the wire).
_MAX_INT64 = 2**63 - 1

KIND_FROM_WIRE: dict[pb.PairKind.ValueType, Kind] = {
    pb.PAIR_KIND_KEEP: Kind.KEEP,
    pb.PAIR_KIND_MEASURE: Kind.MEASURE,
}
KIND_TO_WIRE: dict[Kind, pb.PairKind.ValueType] = {v: k for k, v in KIND_FROM_WIRE.items()}

BASIS_CHOICE_FROM_WIRE: dict[pb.LinkBasis.ValueType, BasisChoice] = {
    pb.LINK_BASIS_UNSPECIFIED: BasisChoice.Z,
    pb.LINK_BASIS_Z: BasisChoice.Z,
    pb.LINK_BASIS_X: BasisChoice.X,
    pb.LINK_BASIS_Y: BasisChoice.Y,
    pb.LINK_BASIS_RANDOM: BasisChoice.RANDOM,
}

ERROR_CODE_TO_WIRE: dict[ErrorCode, pb.LinkErrorCode.ValueType] = {
    ErrorCode.UNSUPPORTED: pb.LINK_ERROR_CODE_UNSUPPORTED,
    ErrorCode.TIMEOUT: pb.LINK_ERROR_CODE_TIMEOUT,
    ErrorCode.EXPIRED: pb.LINK_ERROR_CODE_EXPIRED,
    ErrorCode.NO_MEMORY: pb.LINK_ERROR_CODE_NO_MEMORY,
    ErrorCode.DENIED: pb.LINK_ERROR_CODE_DENIED,
    ErrorCode.CANCELLED: pb.LINK_ERROR_CODE_CANCELLED,
    ErrorCode.UNREACHABLE: pb.LINK_ERROR_CODE_UNREACHABLE,
}


class _Versioned(Protocol):
    @property
    def protocol_version(self) -> int: ...


def check_version(message: _Versioned) -> None:
    version = message.protocol_version
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"request speaks Node API version {version}; this daemon speaks {PROTOCOL_VERSION}"
            f" (set protocol_version = {PROTOCOL_VERSION})"
        )


def create_request_from_wire(msg: pb.LinkCreateRequest) -> CreateRequest:
    """The link layer's CREATE for a LinkCreateRequest; InvalidArgument names a bad field."""
    check_version(msg)
    if not msg.remote:
        raise InvalidArgument("remote must name the neighbour at the other end of the link")
    if msg.number < 1:
        raise InvalidArgument(f"number must be at least 1, got {msg.number}")
    if not (math.isfinite(msg.min_fidelity) and 0.0 <= msg.min_fidelity <= 1.0):
        raise InvalidArgument(f"min_fidelity must be in [0, 1], got {msg.min_fidelity!r}")
    if msg.max_time_ns > _MAX_INT64:
        raise InvalidArgument(f"max_time_ns must be below 2^63, got {msg.max_time_ns}")
    kind = KIND_FROM_WIRE.get(msg.kind)
    if kind is None:
        raise InvalidArgument(
            f"kind {msg.kind} is not a pair kind (use PAIR_KIND_KEEP or PAIR_KIND_MEASURE)"
        )
    basis = BASIS_CHOICE_FROM_WIRE.get(msg.basis)
    if basis is None:
        raise InvalidArgument(
            f"basis {msg.basis} does not exist (use LINK_BASIS_Z, _X, _Y or _RANDOM)"
        )
    return CreateRequest(
        remote=msg.remote,
        number=msg.number,
        min_fidelity=msg.min_fidelity,
        max_time_ns=msg.max_time_ns,
        kind=kind,
        basis=basis,
        purpose=msg.purpose,
        priority=msg.priority,
    )


def measure_on_delivery(
    value: channel_pb.Basis.ValueType, kind: Kind | None = None
) -> Basis | None:
    """The basis a client asked its KEEP qubits to be measured in as they are delivered, or
    None (held for it). ``kind``: the request's, for LinkCreate."""
    if value == channel_pb.BASIS_UNSPECIFIED:
        return None
    if kind is not None and kind is not Kind.KEEP:
        raise InvalidArgument("measure_on_delivery applies to KEEP requests only")
    try:
        return channel_wire.basis_from_wire(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"measure_on_delivery: {exc}") from None


def accepted_event(origin: str, create_id: int) -> pb.LinkEvent:
    return pb.LinkEvent(
        protocol_version=V, accepted=pb.LinkAccepted(origin=origin, create_id=create_id)
    )


def ok_event(ok: PairOk) -> pb.LinkEvent:
    link_id, sequence = ok.pair_id
    msg = pb.LinkOk(
        origin=ok.origin,
        create_id=ok.create_id,
        purpose=ok.purpose,
        link_id=link_id,
        sequence=sequence,
        kind=KIND_TO_WIRE[ok.kind],
        qubit=ok.qubit or 0,
        outcome=ok.outcome or 0,
        bell_index=ok.bell_index,
        fidelity_estimate=ok.fidelity_estimate,
        estimate_time_ns=max(ok.estimate_time_ns, 0),
        index_in_request=ok.index_in_request,
        # A KEEP pair with an outcome was measured by the daemon for the client.
        measured=ok.kind is Kind.KEEP and ok.outcome is not None,
    )
    if ok.basis is not None:
        msg.basis = channel_wire.BASIS_TO_WIRE[ok.basis]
    return pb.LinkEvent(protocol_version=V, ok=msg)


def err_event(err: CreateErr) -> pb.LinkEvent:
    msg = pb.LinkErr(
        origin=err.origin,
        create_id=err.create_id,
        code=ERROR_CODE_TO_WIRE[err.code],
        reason=err.reason,
    )
    if err.seq_range is not None:
        msg.seq_range.CopyFrom(pb.SeqRange(first=err.seq_range[0], last=err.seq_range[1]))
    return pb.LinkEvent(protocol_version=V, err=msg)


def peer_counters(stats: PeerStats) -> pb.PeerCounters:
    return pb.PeerCounters(
        peer=stats.peer,
        address=stats.address,
        connected=stats.connected,
        queued=stats.queued,
        messages_sent=stats.messages_sent,
        batches_sent=stats.batches_sent,
        messages_received=stats.messages_received,
        batches_received=stats.batches_received,
        dropped=stats.dropped,
        malformed=stats.malformed,
        connects=stats.connects,
        reconnects=stats.reconnects,
        last_error=stats.last_error,
    )


NEIGHBOUR_STATE_TO_WIRE: dict[NeighbourState, pb.RoutingNeighbourState.ValueType] = {
    NeighbourState.DOWN: pb.ROUTING_NEIGHBOUR_STATE_DOWN,
    NeighbourState.INIT: pb.ROUTING_NEIGHBOUR_STATE_INIT,
    NeighbourState.UP: pb.ROUTING_NEIGHBOUR_STATE_UP,
}


def routes_response(routing: NodeRouting, neighbours: Sequence[str]) -> pb.RoutesResponse:
    """The routing state of a node; ``neighbours`` in the order to list them."""
    states = routing.neighbours()
    return pb.RoutesResponse(
        protocol_version=V,
        node=routing.node,
        converged=routing.converged.is_set(),
        complete=routing.complete(),
        version=routing.version,
        routes=[
            pb.Route(
                destination=r.destination,
                next_hop=r.next_hop,
                path=r.path,
                cost_s=r.cost_s,
                fidelity=r.fidelity,
            )
            for _, r in sorted(routing.routes().items())
        ],
        neighbours=[
            pb.RoutingNeighbour(peer=peer, state=NEIGHBOUR_STATE_TO_WIRE[states[peer]])
            for peer in neighbours
        ],
        fidelity_threshold=routing.config.fidelity_threshold,
    )


def check_timeout(timeout_s: float, limit_s: float) -> None:
    if not (math.isfinite(timeout_s) and 0 <= timeout_s <= limit_s):
        raise InvalidArgument(f"timeout_s must be in [0, {limit_s:g}], got {timeout_s}")


# -- network layer ----------------------------------------------------------------------------

CLOSE_CODE_TO_WIRE: dict[CloseCode, pb.CircuitCloseCode.ValueType] = {
    CloseCode.COMPLETED: pb.CIRCUIT_CLOSE_CODE_COMPLETED,
    CloseCode.CLOSED: pb.CIRCUIT_CLOSE_CODE_CLOSED,
    CloseCode.UNREACHABLE: pb.CIRCUIT_CLOSE_CODE_UNREACHABLE,
    CloseCode.UNSUPPORTED: pb.CIRCUIT_CLOSE_CODE_UNSUPPORTED,
    CloseCode.NO_MEMORY: pb.CIRCUIT_CLOSE_CODE_NO_MEMORY,
    CloseCode.TIMEOUT: pb.CIRCUIT_CLOSE_CODE_TIMEOUT,
    CloseCode.DENIED: pb.CIRCUIT_CLOSE_CODE_DENIED,
}
CLOSE_CODE_FROM_WIRE: dict[pb.CircuitCloseCode.ValueType, CloseCode] = {
    v: k for k, v in CLOSE_CODE_TO_WIRE.items()
}


@dataclass(frozen=True, slots=True)
class CircuitRequest:
    """An OpenCircuitRequest, checked."""

    destination: str
    min_fidelity: float
    number: int
    #: measure_on_delivery, or None: pairs' qubits are held for clients.
    measure: Basis | None


def circuit_request_from_wire(msg: pb.OpenCircuitRequest) -> CircuitRequest:
    """InvalidArgument names a bad field; whether the destination exists is routing's call."""
    check_version(msg)
    if not msg.destination:
        raise InvalidArgument("destination must name the node at the far end of the circuit")
    if not (math.isfinite(msg.min_fidelity) and 0.0 <= msg.min_fidelity <= 1.0):
        raise InvalidArgument(f"min_fidelity must be in [0, 1], got {msg.min_fidelity!r}")
    return CircuitRequest(
        destination=msg.destination,
        min_fidelity=msg.min_fidelity,
        number=msg.number,
        measure=measure_on_delivery(msg.measure_on_delivery),
    )


def circuit_id_to_wire(cid: CircuitId) -> pb.CircuitId:
    return pb.CircuitId(head=cid[0], circuit=cid[1])


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """What the opened and incoming events tell about a circuit."""

    circuit_id: CircuitId
    path: tuple[str, ...]
    link_fidelity: tuple[float, ...]
    cutoff_ns: int
    min_fidelity: float
    number: int


def opened_event(info: CircuitInfo) -> pb.CircuitEvent:
    return pb.CircuitEvent(
        protocol_version=V,
        opened=pb.CircuitOpened(
            circuit_id=circuit_id_to_wire(info.circuit_id),
            path=info.path,
            link_fidelity=info.link_fidelity,
            cutoff_ns=max(info.cutoff_ns, 0),
            min_fidelity=info.min_fidelity,
            number=info.number,
        ),
    )


def incoming_event(info: CircuitInfo) -> pb.CircuitEvent:
    return pb.CircuitEvent(
        protocol_version=V,
        incoming=pb.CircuitIncoming(
            circuit_id=circuit_id_to_wire(info.circuit_id),
            path=info.path,
            link_fidelity=info.link_fidelity,
            cutoff_ns=max(info.cutoff_ns, 0),
            min_fidelity=info.min_fidelity,
            number=info.number,
        ),
    )


def pair_event(
    pair: EndToEndPair, outcome: int | None = None, basis: Basis | None = None
) -> pb.CircuitEvent:
    """``outcome``/``basis``: the daemon measured the qubit for the client (not held)."""
    msg = pb.CircuitPair(
        circuit_id=circuit_id_to_wire(pair.circuit_id),
        index=pair.index,
        qubit=pair.qubit,
        remote=pair.remote,
        fidelity_estimate=pair.fidelity_estimate,
        estimate_time_ns=max(pair.estimate_time_ns, 0),
        weights=pair.weights,
        measured=outcome is not None,
        outcome=outcome or 0,
    )
    if basis is not None:
        msg.basis = channel_wire.BASIS_TO_WIRE[basis]
    return pb.CircuitEvent(protocol_version=V, pair=msg)


def closed_event(closed: CircuitClosed) -> pb.CircuitEvent:
    return pb.CircuitEvent(
        protocol_version=V,
        closed=pb.CircuitClosed(
            circuit_id=circuit_id_to_wire(closed.circuit_id),
            code=CLOSE_CODE_TO_WIRE[closed.code],
            node=closed.node,
            reason=closed.reason,
            delivered=closed.delivered,
        ),
    )
