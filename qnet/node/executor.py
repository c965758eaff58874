"""One queue of physical commands for all of a node's link cores, run in order as batched
``Execute`` requests.

Each link core issues physical commands (arm, disarm, free, measure). They share one queue:
whatever queued while the previous request ran goes to the backend as the next one, so a
repeater's two links (re-arming after their heralds, say) share requests. Per-request cost
dominates, so the busier the node, the larger its batches. Each command's owner turns it into
operations and takes back its results; the order of the commands of any one owner is kept.

The circuits' commands (swaps, corrections, frees) share it too, and run first in their batch.
A link core decides to arm from accounting in which the circuit's swaps and frees issued by the
same input have already happened (a qubit measured or freed is no longer held). Run behind
those Arms, they left the backend's memory full when an Arm ran, and it failed with NoMemory.
On a nine-hop chain in qnet.sim this disarmed a repeater's inner link early; its outer link
then re-armed every qubit that freed (it comes first when the node shares out its memory), so
the inner link never got one back and the chain stopped delivering. Both are queued by the
same input, so they meet in the same batch, and running the circuits' first keeps the backend
in step with the accounting. The circuits' commands act only on pairs already made, so they
never need a link command of their batch to run before them. (A link left with nothing armed
by a real memory shortage can still wait behind a busy sibling that re-arms every qubit that
frees: the node's share-out of memory does not yet guarantee each working link one qubit.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import trio

from qnet.errors import QnetError
from qnet.link.events import PhysicalCommand
from qnet.node.interfaces import ChannelAccess
from qnet.v1 import channel_pb2 as pb

log = logging.getLogger("qnet.node")


class CommandOwner(Protocol):
    """Who issued a command: turns it into operations and takes back what became of them."""

    def operations(self, cmd: PhysicalCommand) -> Sequence[pb.Operation]: ...

    def on_result(self, cmd: PhysicalCommand, result: pb.OperationResult, now: int) -> None:
        """One operation of ``cmd`` ran; ``result`` is its result."""

    def on_failure(self, cmd: PhysicalCommand, failure: pb.OperationFailure, now: int) -> None:
        """An operation of ``cmd`` failed: the rest of ``cmd``'s operations were not run."""

    def after_batch(self, cmds: list[PhysicalCommand], error: QnetError | None) -> None:
        """The request holding ``cmds`` (this owner's, in order) is over; ``error`` if the
        request itself failed (then some commands may not have run)."""


class CommandQueue:
    """An owner's handle on the node's queue."""

    __slots__ = ("_executor", "_owner")

    def __init__(self, executor: NodeExecutor, owner: CommandOwner) -> None:
        self._executor = executor
        self._owner = owner

    def send_nowait(self, cmd: PhysicalCommand) -> None:
        executor = self._executor
        executor._queue.append((self._owner, cmd))
        waiter = executor._waiter
        if waiter is not None:
            executor._waiter = None
            trio.lowlevel.reschedule(waiter)


class NodeExecutor:
    def __init__(
        self,
        node: str,
        channel: ChannelAccess,
        now: Callable[[], int],
        *,
        settle: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.node = node
        self.channel = channel
        self._now = now
        #: Wraps the owners' ``after_batch`` calls of a batch: the node settles what they all
        #: changed once, at the end, rather than after each.
        self._settle = settle
        #: Commands queued since the running batch was taken. A plain list and a parked task
        #: rather than a memory channel: a command costs an append, and a wake-up is one
        #: reschedule of the task.
        self._queue: list[tuple[CommandOwner, PhysicalCommand]] = []
        self._waiter: trio.lowlevel.Task | None = None
        self._first: CommandOwner | None = None

    def queue(self, owner: CommandOwner, *, first: bool = False) -> CommandQueue:
        """``owner``'s handle; ``first``: its commands run before the others' of a batch."""
        if first:
            self._first = owner
        return CommandQueue(self, owner)

    async def _next_batch(self) -> list[tuple[CommandOwner, PhysicalCommand]]:
        """Everything queued, once there is something. A step of the task passes first
        either way, so that what other tasks queue at this instant joins the batch."""
        if self._queue:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            self._waiter = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        batch, self._queue = self._queue, []
        return batch

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            self._waiter = None

    async def _serve(self) -> None:
        settle = self._settle if self._settle is not None else nullcontext
        while True:
            batch = await self._next_batch()
            first = self._first
            if first is not None and len(batch) > 1:
                # The circuits' commands go first (see the module's docstring); the sort is
                # stable, so each owner's commands keep their order.
                batch.sort(key=lambda entry: entry[0] is not first)
            error: QnetError | None = None
            try:
                await self._run_batch(batch)
            except QnetError as exc:
                error = exc
                log.error("%s: backend request failed: %s", self.node, exc)
            by_owner: dict[int, tuple[CommandOwner, list[PhysicalCommand]]] = {}
            for owner, cmd in batch:
                group = by_owner.get(id(owner))
                if group is None:
                    by_owner[id(owner)] = (owner, [cmd])
                else:
                    group[1].append(cmd)
            with settle():
                for owner, cmds in by_owner.values():
                    owner.after_batch(cmds, error)

    async def _run_batch(self, batch: list[tuple[CommandOwner, PhysicalCommand]]) -> None:
        ops: list[pb.Operation] = []
        owners: list[tuple[CommandOwner, PhysicalCommand]] = []
        for owner, cmd in batch:
            for op in owner.operations(cmd):
                ops.append(op)
                owners.append((owner, cmd))
        start = 0
        while start < len(ops):
            resp = await self.channel.execute(ops[start:])
            now = self._now()
            for i, result in enumerate(resp.results):
                owner, cmd = owners[start + i]
                owner.on_result(cmd, result, now)
            if not resp.HasField("failure"):
                return
            failed = start + resp.failure.index
            owner, cmd = owners[failed]
            owner.on_failure(cmd, resp.failure, now)
            start = failed + 1
            while start < len(ops) and owners[start][1] is cmd:
                start += 1  # the rest of a failed command's operations would act on bad state
