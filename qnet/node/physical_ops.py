"""The backend operations that carry out the layer cores' physical commands."""

from __future__ import annotations

from qnet.channel import wire
from qnet.link.events import Arm, Disarm, Free, Gates, MeasureQubit, PhysicalCommand
from qnet.v1 import channel_pb2 as pb


def operations(peer: str, cmd: PhysicalCommand) -> list[pb.Operation]:
    """``Execute`` operations for one command; ``peer`` names the link of arm/disarm."""
    if isinstance(cmd, Arm):
        return [
            pb.Operation(
                arm=pb.ArmOp(peer=peer, allocate=cmd.count, bright_state=cmd.bright_state or 0.0)
            )
        ]
    if isinstance(cmd, Disarm):
        return [pb.Operation(disarm=pb.DisarmOp(peer=peer, free=True))]
    if isinstance(cmd, MeasureQubit):
        basis = wire.BASIS_TO_WIRE[cmd.basis]
        return [pb.Operation(measure=pb.MeasureOp(qubit=cmd.qubit, basis=basis))]
    if isinstance(cmd, Gates):
        return [
            pb.Operation(gate=pb.GateOp(gate=wire.GATE_TO_WIRE[gate], qubits=qubits, angle=angle))
            for gate, qubits, angle in cmd.ops
        ]
    if isinstance(cmd, Free):
        return [pb.Operation(free=pb.FreeOp(qubits=cmd.qubits))]
    raise AssertionError(f"unknown physical command {cmd!r}")
