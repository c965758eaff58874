"""The node's command executor: batching, order, and the node settling once per batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import trio
import trio.testing

from qnet.errors import QnetError
from qnet.link.events import PhysicalCommand
from qnet.node.executor import NodeExecutor
from qnet.v1 import channel_pb2 as pb


@dataclass(frozen=True)
class _Cmd(PhysicalCommand):
    name: str


class _Channel:
    """Runs every operation; records the requests."""

    def __init__(self) -> None:
        self.requests: list[list[int]] = []

    async def execute(self, ops: Sequence[pb.Operation]) -> pb.ExecuteResponse:
        self.requests.append([op.allocate.count for op in ops])
        resp = pb.ExecuteResponse()
        for _ in ops:
            resp.results.add()
        return resp


class _Owner:
    def __init__(self, log: list[str], tag: int) -> None:
        self.log = log
        self.tag = tag

    def operations(self, cmd: PhysicalCommand) -> Sequence[pb.Operation]:
        return [pb.Operation(allocate=pb.AllocateOp(count=self.tag))]

    def on_result(self, cmd: PhysicalCommand, result: pb.OperationResult, now: int) -> None:
        assert isinstance(cmd, _Cmd)
        self.log.append(f"result {cmd.name}")

    def on_failure(self, cmd: PhysicalCommand, failure: pb.OperationFailure, now: int) -> None:
        raise AssertionError("nothing fails here")

    def after_batch(self, cmds: list[PhysicalCommand], error: QnetError | None) -> None:
        self.log.append(f"after {self.tag}")


async def test_commands_queued_together_share_a_request_first_owner_first() -> None:
    channel = _Channel()
    log: list[str] = []
    settled: list[str] = []

    @contextmanager
    def settle() -> Iterator[None]:
        settled.append("enter")
        yield
        settled.append("exit")
        log.append("settled")

    executor = NodeExecutor("n", channel, lambda: 0, settle=settle)  # type: ignore[arg-type]
    links = executor.queue(_Owner(log, 1))
    circuits = executor.queue(_Owner(log, 2), first=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run)
        await trio.testing.wait_all_tasks_blocked()
        links.send_nowait(_Cmd("a"))
        circuits.send_nowait(_Cmd("b"))
        links.send_nowait(_Cmd("c"))
        await trio.testing.wait_all_tasks_blocked()
        assert channel.requests == [[2, 1, 1]]
        assert log == ["result b", "result a", "result c", "after 2", "after 1", "settled"]
        assert settled == ["enter", "exit"]
        # Idle again: the next command wakes it and goes alone.
        links.send_nowait(_Cmd("d"))
        await trio.testing.wait_all_tasks_blocked()
        assert channel.requests == [[2, 1, 1], [1]]
        nursery.cancel_scope.cancel()
