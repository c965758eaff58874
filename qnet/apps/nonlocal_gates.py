"""Two-qubit gates between qubits of different nodes, from one EPR pair and two classical
bits (Eisert, Jacobs, Papadopoulos & Plenio 2000; the "cat-entangler / cat-disentangler"
of Yimsiriwattana & Lomonaco 2004):

1. cat-entangler: the control's node applies CNOT(control → its half e_a), measures e_a in Z
   and sends the outcome m₁; the target's node applies X^m₁ to its half e_b, which now
   copies the control in the computational basis (α|0,0⟩ + β|1,1⟩ on control, e_b);
2. e_b controls the local gate on the target (CNOT, or CZ for a distributed CZ);
3. cat-disentangler: the target's node measures e_b in X and sends m₂; the control's node
   applies Z^m₂, which removes e_b from the superposition.

A Werner pair of fidelity F is |Φ+⟩ with X, Y or Z on e_b, each with probability (1 − F)/3:
an X on e_b becomes an X (CNOT) or Z (CZ) on the target, a Z on e_b a Z on the control. So
a truth-table check sees the CNOT right with probability (1 + 2F)/3, and a Bell state made
by it has fidelity F.
"""

from __future__ import annotations

from qnet.api.aio import AsyncQubit, AsyncSocket
from qnet.apps.session import recv_json, send_json


async def control_side(sock: AsyncSocket, control: AsyncQubit) -> float:
    """The control's half of a distributed CNOT or CZ; returns the pair's fidelity estimate."""
    half = await sock.epr()
    await control.cnot(half)
    await send_json(sock, "cat", m=await half.measure("Z"))
    if (await recv_json(sock, "uncat"))["m"]:
        await control.z()
    return half.fidelity


async def target_side(sock: AsyncSocket, target: AsyncQubit, *, gate: str = "cnot") -> float:
    """The target's half: ``gate`` "cnot" (target flipped) or "cz" (phase)."""
    half = await sock.epr()
    if (await recv_json(sock, "cat"))["m"]:
        await half.x()
    if gate == "cz":
        await half.cz(target)
    else:
        await half.cnot(target)
    await send_json(sock, "uncat", m=await half.measure("X"))
    return half.fidelity
