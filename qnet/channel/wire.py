"""Conversions between the Channel API messages and the physical core's types.

Every inbound message passes ``check_version`` first; enum values and numbers are validated
here or by the parameter classes, so the core only ever sees well-formed input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from qnet.errors import InvalidArgument, ProtocolError, VersionMismatch
from qnet.physical.events import HeraldEvent
from qnet.physical.gates import Basis, GateName
from qnet.physical.heralding import HeraldingModel
from qnet.physical.params import LinkParams, NodeParams, Scheme
from qnet.v1 import channel_pb2 as pb

#: The Channel API version this implementation speaks.
PROTOCOL_VERSION = 1


class _Versioned(Protocol):
    @property
    def protocol_version(self) -> int: ...


def check_version(message: _Versioned) -> None:
    if message.protocol_version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"request speaks protocol version {message.protocol_version}; this backend speaks"
            f" {PROTOCOL_VERSION} (set protocol_version = {PROTOCOL_VERSION})"
        )


GATE_FROM_WIRE: dict[pb.Gate.ValueType, GateName] = {
    pb.GATE_X: GateName.X,
    pb.GATE_Y: GateName.Y,
    pb.GATE_Z: GateName.Z,
    pb.GATE_H: GateName.H,
    pb.GATE_S: GateName.S,
    pb.GATE_SDG: GateName.SDG,
    pb.GATE_T: GateName.T,
    pb.GATE_TDG: GateName.TDG,
    pb.GATE_RX: GateName.RX,
    pb.GATE_RY: GateName.RY,
    pb.GATE_RZ: GateName.RZ,
    pb.GATE_CNOT: GateName.CNOT,
    pb.GATE_CZ: GateName.CZ,
    pb.GATE_SWAP: GateName.SWAP,
}
GATE_TO_WIRE: dict[GateName, pb.Gate.ValueType] = {v: k for k, v in GATE_FROM_WIRE.items()}

BASIS_FROM_WIRE: dict[pb.Basis.ValueType, Basis] = {
    pb.BASIS_Z: Basis.Z,
    pb.BASIS_X: Basis.X,
    pb.BASIS_Y: Basis.Y,
}
BASIS_TO_WIRE: dict[Basis, pb.Basis.ValueType] = {v: k for k, v in BASIS_FROM_WIRE.items()}

SCHEME_FROM_WIRE: dict[pb.Scheme.ValueType, Scheme] = {
    pb.SCHEME_UNSPECIFIED: Scheme.SINGLE_CLICK,
    pb.SCHEME_SINGLE_CLICK: Scheme.SINGLE_CLICK,
    pb.SCHEME_DOUBLE_CLICK: Scheme.DOUBLE_CLICK,
}
SCHEME_TO_WIRE: dict[Scheme, pb.Scheme.ValueType] = {
    Scheme.SINGLE_CLICK: pb.SCHEME_SINGLE_CLICK,
    Scheme.DOUBLE_CLICK: pb.SCHEME_DOUBLE_CLICK,
}


def gate_from_wire(value: pb.Gate.ValueType) -> GateName:
    try:
        return GATE_FROM_WIRE[value]
    except KeyError:
        raise InvalidArgument(f"gate {value} does not exist") from None


def basis_from_wire(value: pb.Basis.ValueType) -> Basis:
    try:
        return BASIS_FROM_WIRE[value]
    except KeyError:
        raise InvalidArgument(
            f"basis {value} does not exist (use BASIS_Z, BASIS_X or BASIS_Y)"
        ) from None


def node_params_from_wire(memory_qubits: int, noise: pb.NodeNoise) -> NodeParams:
    return NodeParams(
        memory_qubits=memory_qubits,
        t1_s=noise.t1_s,
        t2_s=noise.t2_s,
        memory_depolar_rate_hz=noise.memory_depolar_rate_hz,
        gate_error_1q=noise.gate_error_1q,
        gate_error_2q=noise.gate_error_2q,
        measure_error=noise.measure_error,
    )


def node_noise_to_wire(params: NodeParams) -> pb.NodeNoise:
    return pb.NodeNoise(
        t1_s=params.t1_s,
        t2_s=params.t2_s,
        memory_depolar_rate_hz=params.memory_depolar_rate_hz,
        gate_error_1q=params.gate_error_1q,
        gate_error_2q=params.gate_error_2q,
        measure_error=params.measure_error,
    )


def link_params_from_wire(msg: pb.LinkParams) -> LinkParams:
    """Zero fields take the documented defaults (proto3 cannot tell 0 from unset)."""
    default = LinkParams()
    if msg.scheme not in SCHEME_FROM_WIRE:
        raise InvalidArgument(f"scheme {msg.scheme} does not exist")
    return LinkParams(
        length_km=msg.length_km,
        attenuation_db_per_km=msg.attenuation_db_per_km or default.attenuation_db_per_km,
        scheme=SCHEME_FROM_WIRE[msg.scheme],
        detector_efficiency=msg.detector_efficiency or default.detector_efficiency,
        emission_efficiency=msg.emission_efficiency or default.emission_efficiency,
        source_fidelity=msg.source_fidelity or default.source_fidelity,
        bright_state=msg.bright_state or default.bright_state,
        attempt_overhead_ns=msg.attempt_overhead_ns or default.attempt_overhead_ns,
        multiplexing=msg.multiplexing or default.multiplexing,
    )


def link_params_to_wire(params: LinkParams) -> pb.LinkParams:
    return pb.LinkParams(
        length_km=params.length_km,
        attenuation_db_per_km=params.attenuation_db_per_km,
        scheme=SCHEME_TO_WIRE[params.scheme],
        detector_efficiency=params.detector_efficiency,
        emission_efficiency=params.emission_efficiency,
        source_fidelity=params.source_fidelity,
        bright_state=params.bright_state,
        attempt_overhead_ns=params.attempt_overhead_ns,
        multiplexing=params.multiplexing,
    )


def theory_to_wire(model: HeraldingModel) -> pb.LinkTheory:
    return pb.LinkTheory(
        success_probability=model.success_probability,
        cycle_ns=model.cycle_ns,
        rate_hz=model.rate_hz,
        fidelity=model.fidelity(),
        transmissivity=model.transmissivity,
    )


def herald_to_wire(event: HeraldEvent) -> pb.Event:
    return pb.Event(
        protocol_version=PROTOCOL_VERSION,
        time_ns=event.time_ns,
        herald=pb.Herald(
            peer=event.peer,
            sequence=event.sequence,
            qubit=event.qubit,
            bell_index=event.bell_index,
            attempts=event.attempts,
            emitted_ns=event.emitted_ns,
            link_id=event.link_id,
            bright_state=event.bright_state,
        ),
    )


def herald_from_wire(node: str, event: pb.Event) -> HeraldEvent:
    h = event.herald
    return HeraldEvent(
        node=node,
        peer=h.peer,
        link_id=h.link_id,
        sequence=h.sequence,
        qubit=h.qubit,
        bell_index=h.bell_index,
        attempts=h.attempts,
        emitted_ns=h.emitted_ns,
        time_ns=event.time_ns,
        bright_state=h.bright_state,
    )


async def heralds_after_subscription(
    node: str, events: AsyncIterator[pb.Event]
) -> AsyncIterator[HeraldEvent]:
    """Check that an Events stream opens with ``Subscribed``; then its heralds until the
    session ends. Awaiting the first item is what makes subscribing a readiness signal."""
    stream = aiter(events)
    first = await anext(stream, None)
    if first is None or not first.HasField("subscribed"):
        raise ProtocolError("the event stream did not start with a subscription")
    return _heralds_of(node, stream)


async def _heralds_of(node: str, events: AsyncIterator[pb.Event]) -> AsyncIterator[HeraldEvent]:
    async for event in events:
        if event.HasField("herald"):
            yield herald_from_wire(node, event)
        elif event.HasField("session_ended"):
            return
