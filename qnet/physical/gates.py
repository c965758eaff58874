"""Gate matrices and the table of gates the backend accepts.

Conventions (DESIGN.md §7): RX/RY/RZ(θ) = exp(−iθσ/2); CNOT's first qubit is the control.
Fixed gates are module constants so that applying one allocates nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from qnet.errors import InvalidArgument

Matrix = npt.NDArray[np.complex128]

_S2 = 1 / math.sqrt(2)

I2: Matrix = np.eye(2, dtype=np.complex128)
X: Matrix = np.array([[0, 1], [1, 0]], dtype=np.complex128)
Y: Matrix = np.array([[0, -1j], [1j, 0]], dtype=np.complex128)
Z: Matrix = np.array([[1, 0], [0, -1]], dtype=np.complex128)
H: Matrix = np.array([[_S2, _S2], [_S2, -_S2]], dtype=np.complex128)
S: Matrix = np.array([[1, 0], [0, 1j]], dtype=np.complex128)
SDG: Matrix = S.conj().T.copy()
T: Matrix = np.array([[1, 0], [0, np.exp(1j * math.pi / 4)]], dtype=np.complex128)
TDG: Matrix = T.conj().T.copy()
CNOT: Matrix = np.array(
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.complex128
)
CZ: Matrix = np.diag([1, 1, 1, -1]).astype(np.complex128)
SWAP: Matrix = np.array(
    [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.complex128
)


def rx(theta: float) -> Matrix:
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    return np.array([[c, -1j * s], [-1j * s, c]], dtype=np.complex128)


def ry(theta: float) -> Matrix:
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    return np.array([[c, -s], [s, c]], dtype=np.complex128)


def rz(theta: float) -> Matrix:
    return np.array([[np.exp(-0.5j * theta), 0], [0, np.exp(0.5j * theta)]], dtype=np.complex128)


class GateName(Enum):
    X = "x"
    Y = "y"
    Z = "z"
    H = "h"
    S = "s"
    SDG = "sdg"
    T = "t"
    TDG = "tdg"
    RX = "rx"
    RY = "ry"
    RZ = "rz"
    CNOT = "cnot"
    CZ = "cz"
    SWAP = "swap"


@dataclass(frozen=True, slots=True)
class GateSpec:
    arity: int
    fixed: Matrix | None  # None for the rotations, built from the angle


GATES: dict[GateName, GateSpec] = {
    GateName.X: GateSpec(1, X),
    GateName.Y: GateSpec(1, Y),
    GateName.Z: GateSpec(1, Z),
    GateName.H: GateSpec(1, H),
    GateName.S: GateSpec(1, S),
    GateName.SDG: GateSpec(1, SDG),
    GateName.T: GateSpec(1, T),
    GateName.TDG: GateSpec(1, TDG),
    GateName.RX: GateSpec(1, None),
    GateName.RY: GateSpec(1, None),
    GateName.RZ: GateSpec(1, None),
    GateName.CNOT: GateSpec(2, CNOT),
    GateName.CZ: GateSpec(2, CZ),
    GateName.SWAP: GateSpec(2, SWAP),
}

_ROTATIONS = {GateName.RX: rx, GateName.RY: ry, GateName.RZ: rz}


def gate_matrix(gate: GateName, angle: float = 0.0) -> Matrix:
    """The unitary of ``gate``; ``angle`` (radians) is used by the rotations only."""
    if not math.isfinite(angle):
        raise InvalidArgument(f"angle of {gate.value} must be finite, got {angle!r}")
    spec = GATES[gate]
    if spec.fixed is not None:
        return spec.fixed
    return _ROTATIONS[gate](angle)


class Basis(Enum):
    Z = "Z"
    X = "X"
    Y = "Y"


def parse_basis(basis: object) -> Basis:
    """A ``Basis``, or its name in any case ("z", "X"), as a ``Basis``."""
    if isinstance(basis, Basis):
        return basis
    try:
        return Basis[str(basis).upper()]
    except KeyError:
        raise InvalidArgument(f"unknown basis {basis!r} (Z, X or Y)") from None


def parse_gate(gate: object) -> GateName:
    """A ``GateName``, or its value in any case ("h", "CNOT"), as a ``GateName``."""
    if isinstance(gate, GateName):
        return gate
    try:
        return GateName(str(gate).lower())
    except ValueError:
        known = ", ".join(g.value for g in GateName)
        raise InvalidArgument(f"unknown gate {gate!r} (known: {known})") from None


#: Rotation that takes a basis's +1 eigenstate to |0⟩, so every measurement is done in Z.
TO_Z_BASIS: dict[Basis, Matrix | None] = {Basis.Z: None, Basis.X: H, Basis.Y: H @ SDG}

#: Eigenstates |outcome⟩ of each basis, outcome 0 being the +1 eigenstate.
EIGENSTATES: dict[Basis, tuple[Matrix, Matrix]] = {
    Basis.Z: (np.array([1, 0], dtype=np.complex128), np.array([0, 1], dtype=np.complex128)),
    Basis.X: (
        np.array([_S2, _S2], dtype=np.complex128),
        np.array([_S2, -_S2], dtype=np.complex128),
    ),
    Basis.Y: (
        np.array([_S2, 1j * _S2], dtype=np.complex128),
        np.array([_S2, -1j * _S2], dtype=np.complex128),
    ),
}


def bell_state(index: int) -> Matrix:
    """Ket of Bell state ``index`` = x + 2z, i.e. (I ⊗ X^x Z^z)|Φ+⟩ (0 Φ+, 1 Ψ+, 2 Φ−, 3 Ψ−)."""
    if index not in (0, 1, 2, 3):
        raise InvalidArgument(f"Bell index must be 0..3, got {index!r}")
    x, z = index & 1, index >> 1
    phi = np.array([_S2, 0, 0, _S2], dtype=np.complex128)
    op = np.kron(I2, np.linalg.matrix_power(X, x) @ np.linalg.matrix_power(Z, z))
    ket: Matrix = op @ phi
    return ket


BELL_STATES: tuple[Matrix, ...] = tuple(bell_state(i) for i in range(4))
BELL_PROJECTORS: tuple[Matrix, ...] = tuple(np.outer(b, b.conj()) for b in BELL_STATES)
