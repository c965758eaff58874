"""The state engine: qubits live in groups, each group one density matrix.

A gate acts on its group's tensor (the k target axes only), so no full-size Kronecker product is
built per gate; an operation across groups merges them first, measuring or discarding a qubit
shrinks its group. Qubits are plain integer ids: ownership, time and noise parameters belong to
the channel core above this module.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qnet.errors import GroupTooLarge, InvalidArgument, NotFound
from qnet.physical.gates import EIGENSTATES, TO_Z_BASIS, Basis, Matrix

RealArray = npt.NDArray[np.float64]

_KET0: Matrix = np.array([[1, 0], [0, 0]], dtype=np.complex128)


class QubitGroup:
    """Qubits sharing one density matrix; ``qubits[i]`` is tensor axis i (big-endian)."""

    __slots__ = ("qubits", "rho")

    def __init__(self, qubits: list[int], rho: Matrix) -> None:
        self.qubits = qubits
        self.rho = rho

    @property
    def size(self) -> int:
        return len(self.qubits)


def _permute_operator(op: Matrix, perm: Sequence[int]) -> Matrix:
    """Reorder the tensor factors of a k-qubit operator: result axis j = input axis perm[j]."""
    k = len(perm)
    axes = list(perm) + [k + p for p in perm]
    out: Matrix = op.reshape((2,) * (2 * k)).transpose(axes).reshape(1 << k, 1 << k)
    return out


def _split(rho: Matrix, pos: int, n: int) -> Matrix:
    """View of ``rho`` as (L, 2, R, L, 2, R) around tensor axis ``pos``."""
    left, right = 1 << pos, 1 << (n - pos - 1)
    return rho.reshape(left, 2, right, left, 2, right)


#: Groups of up to this many qubits take a gate as one full-size operator (two matmuls of at
#: most 32×32), built once per (gate, positions, size) and kept: numpy's per-call overhead, not
#: arithmetic, is what small groups cost, and they are nearly all groups (pairs, and the four
#: qubits of a swap). Larger groups act on the target axes only.
SMALL_GROUP_QUBITS = 5
_EMBEDDED_LIMIT = 512
_embedded_cache: dict[tuple[bytes, tuple[int, ...], int], tuple[Matrix, Matrix]] = {}


def kron(a: Matrix, b: Matrix) -> Matrix:
    """``np.kron`` of two matrices (the same products), without its generic machinery."""
    (ra, ca), (rb, cb) = a.shape, b.shape
    out: Matrix = (a[:, None, :, None] * b[None, :, None, :]).reshape(ra * rb, ca * cb)
    return out


def _embedded(op: Matrix, positions: tuple[int, ...], n: int) -> tuple[Matrix, Matrix]:
    """(U, U†) of the k-qubit ``op`` on tensor axes ``positions`` as an n-qubit operator."""
    # The fixed gates are the same array every time: found by identity first, without
    # hashing the matrix's bytes (the entry holds ``op``, so its id is not reused meanwhile).
    by_id = _embedded_by_id.get((id(op), positions, n))
    if by_id is not None and by_id[0] is op:
        return by_id[1]
    key = (op.tobytes(), positions, n)
    found = _embedded_cache.get(key)
    if found is None:
        k = len(positions)
        full = kron(op, np.eye(1 << (n - k), dtype=np.complex128))
        # Axis j of ``full`` holds tensor axis order[j]: the op's axes first, then the rest.
        order = list(positions) + [p for p in range(n) if p not in positions]
        u = np.ascontiguousarray(_permute_operator(full, [order.index(j) for j in range(n)]))
        found = (u, np.ascontiguousarray(u.conj().T))
        if len(_embedded_cache) < _EMBEDDED_LIMIT:  # rotations by arbitrary angles: not kept
            _embedded_cache[key] = found
    if len(_embedded_by_id) < _EMBEDDED_LIMIT:
        _embedded_by_id[(id(op), positions, n)] = (op, found)
    return found


_embedded_by_id: dict[tuple[int, tuple[int, ...], int], tuple[Matrix, tuple[Matrix, Matrix]]] = {}


def conjugate(rho: Matrix, op: Matrix, positions: Sequence[int], n: int) -> Matrix:
    """ρ → UρU† for the k-qubit unitary ``op`` on tensor axes ``positions`` of an n-qubit ρ:
    for a small group as one cached full-size operator, otherwise acting on the target axes
    only (no full-size Kronecker product)."""
    if n <= SMALL_GROUP_QUBITS:
        u, u_dag = _embedded(op, tuple(positions), n)
        small: Matrix = u @ rho @ u_dag
        return small
    positions = list(positions)
    k = len(positions)
    if k == n:
        if positions != list(range(n)):
            op = _permute_operator(op, [positions.index(j) for j in range(n)])
        out: Matrix = op @ rho @ op.conj().T
        return out
    if k == 1:
        # U acts on the row index, U* on the column index, each as a batched 2x2 matmul.
        pos = positions[0]
        left, right = 1 << pos, 1 << (n - pos - 1)
        d = 1 << n
        rows = np.matmul(op, rho.reshape(left, 2, right * d))
        cols = np.matmul(op.conj(), rows.reshape(d * left, 2, right))
        result: Matrix = cols.reshape(d, d)
        return result
    t = rho.reshape((2,) * (2 * n))
    u = op.reshape((2,) * (2 * k))
    ins = list(range(k, 2 * k))
    t = np.tensordot(u, t, axes=(ins, positions))
    t = np.moveaxis(t, list(range(k)), positions)
    cols = [n + p for p in positions]
    t = np.tensordot(t, u.conj(), axes=(cols, ins))
    t = np.moveaxis(t, list(range(2 * n - k, 2 * n)), cols)
    d = 1 << n
    full: Matrix = np.ascontiguousarray(t).reshape(d, d)
    return full


def depolarized(rho: Matrix, positions: Sequence[int], p: float, n: int) -> Matrix:
    """k-qubit depolarising channel on tensor axes ``positions``: (1−p)ρ + p·(I/2^k ⊗ Tr ρ)."""
    if p <= 0.0:
        return rho
    positions = list(positions)
    k = len(positions)
    src = positions + [n + q for q in positions]
    t = np.moveaxis(rho.reshape((2,) * (2 * n)), src, list(range(2 * k)))
    dk = 1 << k
    blocks = t.reshape((dk, dk, *t.shape[2 * k :]))
    reduced = sum(blocks[i, i] for i in range(dk))
    out = (1.0 - p) * blocks
    for i in range(dk):
        out[i, i] += (p / dk) * reduced
    t = np.moveaxis(out.reshape(t.shape), list(range(2 * k)), src)
    d = 1 << n
    result: Matrix = np.ascontiguousarray(t).reshape(d, d)
    return result


class StateEngine:
    """All qubit states of one backend. ``rng`` draws measurement outcomes."""

    def __init__(self, rng: random.Random, *, max_group_qubits: int = 10) -> None:
        if max_group_qubits < 2:
            raise InvalidArgument("max_group_qubits must be at least 2")
        self.rng = rng
        self.max_group_qubits = max_group_qubits
        self._group: dict[int, QubitGroup] = {}

    # -- bookkeeping ---------------------------------------------------------------------

    def __contains__(self, qubit: int) -> bool:
        return qubit in self._group

    def __len__(self) -> int:
        return len(self._group)

    def group_of(self, qubit: int) -> QubitGroup:
        try:
            return self._group[qubit]
        except KeyError:
            raise NotFound(f"qubit {qubit} does not exist") from None

    def new_qubit(self, qubit: int) -> None:
        """Create ``qubit`` in |0⟩ in a group of its own."""
        if qubit in self._group:
            raise InvalidArgument(f"qubit {qubit} already exists")
        self._group[qubit] = QubitGroup([qubit], _KET0.copy())

    def set_state(self, qubits: Sequence[int], rho: Matrix) -> None:
        """Replace whatever ``qubits`` held by the joint state ``rho`` (qubits in that order)."""
        for q in qubits:
            if q in self._group:
                self.discard(q)
        group = QubitGroup(list(qubits), rho.copy())
        for q in qubits:
            self._group[q] = group

    def discard(self, qubit: int) -> None:
        """Trace ``qubit`` out of its group and forget it."""
        group = self.group_of(qubit)
        del self._group[qubit]
        n = group.size
        if n == 1:
            return
        pos = group.qubits.index(qubit)
        v = _split(group.rho, pos, n)
        d = 1 << (n - 1)
        group.rho = (v[:, 0, :, :, 0, :] + v[:, 1, :, :, 1, :]).reshape(d, d)
        del group.qubits[pos]

    def merge(self, qubits: Sequence[int]) -> QubitGroup:
        """Bring ``qubits`` into one group (Kronecker product of their groups)."""
        table = self._group
        groups: list[QubitGroup] = []
        for q in qubits:
            g = table.get(q)
            if g is None:
                raise NotFound(f"qubit {q} does not exist")
            for h in groups:
                if h is g:
                    break
            else:
                groups.append(g)
        if len(groups) == 1:
            return groups[0]
        total = 0
        for g in groups:
            total += len(g.qubits)
        if total > self.max_group_qubits:
            raise GroupTooLarge(
                f"operation on qubits {list(qubits)} would entangle {total} qubits in one state;"
                f" the limit is {self.max_group_qubits}"
            )
        rho = groups[0].rho
        members = list(groups[0].qubits)
        for g in groups[1:]:
            rho = kron(rho, g.rho)
            members.extend(g.qubits)
        merged = QubitGroup(members, rho)
        for q in members:
            table[q] = merged
        return merged

    # -- operations ----------------------------------------------------------------------

    def apply(self, op: Matrix, qubits: Sequence[int]) -> None:
        """Apply the unitary ``op`` to ``qubits`` (its tensor factors in that order)."""
        if len(qubits) > 1 and len(set(qubits)) != len(qubits):
            raise InvalidArgument(f"a gate's qubits must be distinct, got {list(qubits)}")
        group = self.merge(qubits)
        members = group.qubits
        positions = [members.index(q) for q in qubits]
        group.rho = conjugate(group.rho, op, positions, len(members))

    def measure(
        self, qubit: int, basis: Basis, *, keep: bool = False, rng: random.Random | None = None
    ) -> int:
        """Projective measurement; 0 is the basis's +1 eigenstate. Frees the qubit unless kept.
        ``rng`` (default: the engine's) draws the outcome."""
        # Z, the common case, needs no rotation (and no hashing of the enum member).
        rotation = None if basis is Basis.Z else TO_Z_BASIS[basis]
        if rotation is not None:
            self.apply(rotation, (qubit,))
        group = self.group_of(qubit)
        members = group.qubits
        n = len(members)
        rho = group.rho
        if n == 1:
            p0 = float(rho[0, 0].real)
        else:
            pos = members.index(qubit)
            diag = rho.diagonal().real.reshape(1 << pos, 2, 1 << (n - pos - 1))
            p0 = float(diag[:, 0, :].sum())
        outcome = 0 if (rng or self.rng).random() < p0 else 1
        p = p0 if outcome == 0 else 1.0 - p0
        if n > 1:
            v = _split(rho, pos, n)
            d = 1 << (n - 1)
            group.rho = v[:, outcome, :, :, outcome, :].reshape(d, d) / max(p, 1e-300)
            del members[pos]
        del self._group[qubit]
        if keep:
            ket = EIGENSTATES[basis][outcome]
            self._group[qubit] = QubitGroup([qubit], np.outer(ket, ket.conj()))
        return outcome

    # -- noise primitives (the channel core decides when they apply) ---------------------

    def single_qubit_noise(
        self, qubit: int, *, damping: float = 0.0, coherence: float = 1.0, depolar: float = 0.0
    ) -> None:
        """Amplitude damping γ, then off-diagonals × ``coherence``, then depolarising p.

        Applied in the closed form of the composed Kraus sums: the |1⟩ block keeps
        (1−p)(1−γ) + p/2 of itself and gains p/2 of the |0⟩ block, the |0⟩ block takes the
        rest (trace preserved), and coherences shrink by √(1−γ)·coherence·(1−p). Written as a
        few whole-block numpy operations on the (L, 2, R, L, 2, R) view of the group: the
        fastest form for the small groups of the hot path (lazy memory noise on every touch).
        """
        group = self.group_of(qubit)
        n = len(group.qubits)
        if damping == 0.0 and coherence == 1.0:
            # Depolarising alone (memories without T1/T2): (1 − p)ρ + p·(I/2 ⊗ Tr_q ρ).
            # (A cached 4ⁿ × 4ⁿ map as one matrix-vector product was faster in qnet.sim, but
            # BLAS made it three times as costly in qnet-channeld, beside gRPC's threads.)
            v = _split(group.rho, group.qubits.index(qubit), n)
            mixed = v[:, 0, :, :, 0, :] + v[:, 1, :, :, 1, :]
            mixed *= 0.5 * depolar
            out = v * (1.0 - depolar)
            out[:, 0, :, :, 0, :] += mixed
            out[:, 1, :, :, 1, :] += mixed
            d = 1 << n
            group.rho = out.reshape(d, d)
            return
        keep1 = (1 - depolar) * (1 - damping) + 0.5 * depolar
        shrink = coherence * math.sqrt(1 - damping) * (1 - depolar)
        v = _split(group.rho, group.qubits.index(qubit), n)
        v00 = v[:, 0, :, :, 0, :]
        v11 = v[:, 1, :, :, 1, :]
        out = v * shrink  # the coherences; the populations are written over below
        out[:, 0, :, :, 0, :] = (1 - 0.5 * depolar) * v00 + (1 - keep1) * v11
        out[:, 1, :, :, 1, :] = (0.5 * depolar) * v00 + keep1 * v11
        d = 1 << n
        group.rho = out.reshape(d, d)

    def depolarize(self, qubits: Sequence[int], p: float) -> None:
        """k-qubit depolarising channel: ρ → (1−p)ρ + p·(I/2^k ⊗ Tr_qubits ρ)."""
        if p <= 0.0:
            return
        if len(qubits) == 1:
            self.single_qubit_noise(qubits[0], depolar=p)
            return
        group = self.merge(qubits)
        positions = [group.qubits.index(q) for q in qubits]
        group.rho = depolarized(group.rho, positions, p, group.size)

    # -- inspection (oracle and tests; never part of the node-facing API) ----------------

    def reduced(self, qubits: Sequence[int]) -> Matrix:
        """Reduced density matrix of ``qubits``, tensor factors in that order."""
        wanted = list(qubits)
        if len(set(wanted)) != len(wanted):
            raise InvalidArgument(f"qubits must be distinct, got {wanted}")
        group = self.group_of(wanted[0])
        if group.size == len(wanted) and all(self._group.get(q) is group for q in wanted):
            # Exactly one whole group (a pair, typically): no trace to take.
            if group.qubits == wanted:
                return group.rho.copy()
            return _permute_operator(group.rho, [group.qubits.index(q) for q in wanted])
        rho: Matrix = np.ones((1, 1), dtype=np.complex128)
        order: list[int] = []
        seen: list[QubitGroup] = []
        for q in wanted:
            g = self.group_of(q)
            if any(g is h for h in seen):
                continue
            seen.append(g)
            part, kept = self._trace_to(g, set(wanted))
            rho = kron(rho, part)
            order.extend(kept)
        perm = [order.index(q) for q in wanted]
        if perm != list(range(len(perm))):
            rho = _permute_operator(rho, perm)
        return rho

    @staticmethod
    def _trace_to(group: QubitGroup, keep: set[int]) -> tuple[Matrix, list[int]]:
        n = group.size
        t = group.rho.reshape((2,) * (2 * n))
        kept = list(group.qubits)
        for pos in range(n - 1, -1, -1):
            if group.qubits[pos] not in keep:
                t = np.trace(t, axis1=pos, axis2=pos + len(kept))
                del kept[pos]
        d = 1 << len(kept)
        out: Matrix = t.reshape(d, d)
        return out, kept

    def fidelity(self, qubits: Sequence[int], ket: Matrix) -> float:
        """⟨ψ|ρ|ψ⟩ of the reduced state of ``qubits`` with the pure state ``ket``."""
        rho = self.reduced(qubits)
        return float(np.real(ket.conj() @ rho @ ket))
