"""Arming: how many memory qubits each EGP core keeps armed for generation, and memory
shortage as back-pressure.

A core keeps up to ``pipeline`` qubits armed while it has work, counting against its node's
memory everything it holds (pairs waiting for the peer's word or a purification partner,
OKs waiting to be delivered in order) and the KEEP halves the layer above has not freed
(``EgpCore.set_upper_held``). When nothing can be armed it backs off and, at the master,
counts the streak towards NO_MEMORY; the slave reports it (``MemoryFull``). These functions
are part of ``EgpCore``, kept apart to keep modules short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qnet.link import master
from qnet.link.events import Arm, Disarm, MemoryFull

if TYPE_CHECKING:
    from qnet.link.egp import EgpCore


def update(core: EgpCore, now: int) -> None:
    """Keep up to ``pipeline`` qubits armed while there is work (memory allowing), none
    otherwise. The master re-arms when the request at the head wants another bright
    state."""
    head = core._head()
    if head is None or (core.is_master and head.plan.rounds < 0):
        if core._armed:
            core._out.append(Disarm(core._tag()))
            core._armed = 0
            core._alphas.clear()
        return
    alpha = head.plan.bright_state or core.config.link.bright_state
    if core.is_master and core._armed and alpha != core._armed_alpha:
        core._out.append(Disarm(core._tag()))
        core._armed = 0
        core._alphas.clear()
    # Back-pressure: pairs held for the peer's instructions or a purification partner,
    # and halves the layer above has not freed, count against memory, so stop arming
    # rather than run into the backend's NoMemory.
    held = len(core.pairs)
    for r in core._live.values():
        held += len(r.ready)
    upper = 0 if core._upper_held is None else core._upper_held + core._unreported
    held += upper
    room = core.config.local.memory_qubits - held - core._armed - core._elsewhere
    if now >= core._arm_blocked_until:
        core._arm_blocked_until = -1  # so that next_deadline never reports a past time
    if core._arm_blocked_until >= 0:
        return
    if room <= 0 and not core._armed:
        # Nothing armed means no herald can free anything: as stuck as a failed
        # allocation, so it counts towards NO_MEMORY the same way.
        memory_blocked(
            core,
            now,
            f"{core.node}'s memory is full ({upper} of its"
            f" {core.config.local.memory_qubits} qubits held by the layer above)",
        )
        return
    # One Arm per qubit: a failed allocation then accounts for exactly one of them.
    while core._armed < core.config.pipeline and room > 0:
        core._out.append(Arm(core._tag(), 1, alpha))
        core._armed += 1
        room -= 1
        core._armed_alpha = alpha
        core._alphas.append(alpha)


def memory_blocked(core: EgpCore, now: int, reason: str) -> None:
    """Nothing could be armed for lack of memory: retry after a back-off; the master
    counts the streak towards NO_MEMORY, the slave tells it."""
    core._arm_blocked_until = now + core._backoff_ns
    if core.is_master:
        master.note_full(core, now, reason)
        return
    if core._full_since is None:
        core._full_since = now
    full_for = now - core._full_since
    # A shorter streak cannot fail a request (the master waits the whole memory wait, counted
    # from the start of the streak, which the message carries), so it is not worth a message.
    if 2 * full_for >= core._memory_wait_ns:
        core._send(MemoryFull, now, full_for_ns=full_for)
