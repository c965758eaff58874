"""What every application needs around its protocol: a connection between two nodes, both
ends run at once, one typed error out of a failed run, and the time it took.

An application function takes the nodes it needs and runs each node's role as a task of one
trio run, so the same function serves the CLI against daemons (``qnet.open_node`` per node)
and ``qnet.sim``. The roles talk only through their qnet connection, as they would in
separate processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from qnet.api.aio import AsyncNode, AsyncQubit, AsyncSocket
from qnet.apps.errors import PeerAborted, ProtocolAborted
from qnet.errors import InvalidArgument, QnetError

T = TypeVar("T")

#: Default bound on each socket call of an application (seconds of the network's clock).
DEFAULT_TIMEOUT_S = 60.0


@asynccontextmanager
async def connection(
    client: AsyncNode,
    server: AsyncNode,
    port: int,
    *,
    min_fidelity: float = 0.0,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> AsyncGenerator[tuple[AsyncSocket, AsyncSocket], None]:
    """A connection from ``client`` to ``server``'s ``port``: (client's end, server's end).
    Leaving the block closes both ends."""
    check_positive_int("port", port)
    if client.name == server.name:
        raise InvalidArgument(f"an application needs two different nodes, got {client.name} twice")
    listener = server.socket()
    await listener.bind(port)
    await listener.listen()
    sock = client.socket()
    accepted: list[AsyncSocket] = []
    for s in (listener, sock):
        s.settimeout(timeout_s)

    async def accept() -> None:
        conn, _ = await listener.accept()
        accepted.append(conn)

    try:
        await run_all(
            [accept, lambda: sock.connect((server.name, port), min_fidelity=min_fidelity)]
        )
    finally:
        await listener.close()
    conn = accepted[0]
    conn.settimeout(timeout_s)
    try:
        yield sock, conn
    finally:
        with trio.CancelScope(shield=True):
            await sock.close()
            await conn.close()


async def run_all(tasks: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run every task at once and return their results in order. If any fails, the others
    are cancelled and one error is raised: the first that is not merely the echo of another
    end's failure (``PeerAborted``), so the caller sees the cause."""
    results: list[Any] = [None] * len(tasks)

    async def run(i: int) -> None:
        results[i] = await tasks[i]()

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(tasks)):
                nursery.start_soon(run, i)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        errors = [e for e in leaves if isinstance(e, QnetError)]
        if errors and len(errors) == len(leaves):
            causes = [e for e in errors if not isinstance(e, PeerAborted)] or errors
            raise causes[0] from group
        raise
    return results


async def run_both(a: Callable[[], Awaitable[T]], b: Callable[[], Awaitable[Any]]) -> tuple[T, Any]:
    first, second = await run_all([a, b])
    return first, second


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


async def send_json(sock: AsyncSocket, kind: str, **fields: Any) -> None:
    """A plain (unauthenticated) classical message, for protocols that need no secrecy."""
    await sock.send(json.dumps({"type": kind, **fields}, separators=(",", ":")).encode())


async def recv_json(sock: AsyncSocket, kind: str) -> dict[str, Any]:
    raw = await sock.recv()
    if not raw:
        raise PeerAborted("the other end closed the connection", node=_name(sock))
    message: dict[str, Any] = json.loads(raw)
    if message.get("type") == "abort":
        raise PeerAborted(f"the other end aborted: {message.get('reason')}", node=_name(sock))
    if message.get("type") != kind:
        raise ProtocolAborted(f"expected a {kind!r} message, got {message.get('type')!r}")
    return message


def _name(sock: AsyncSocket) -> str | None:
    return sock.local[0] if sock.local else None


@dataclass
class Stopwatch:
    """Elapsed time on the run's clock (virtual under ``qnet.sim``, so simulated seconds;
    the wall clock against daemons) and on the wall clock."""

    start: float = 0.0
    wall_start: float = 0.0

    @classmethod
    def started(cls) -> Stopwatch:
        return cls(trio.current_time(), time.perf_counter())

    @property
    def elapsed_s(self) -> float:
        return trio.current_time() - self.start

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.wall_start


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be an integer ≥ 1, got {value!r}")
    return value


def check_fidelity(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


async def probe_pair_fidelity(a: AsyncSocket, b: AsyncSocket) -> float:
    """The stack's fidelity estimate of this connection's pairs, from one pair taken and
    given back (the models each application prints its figure against start from it)."""
    qa: AsyncQubit
    qb: AsyncQubit
    qa, qb = await run_both(a.epr, b.epr)
    await qa.free()
    await qb.free()
    return min(qa.fidelity, qb.fidelity)


def timing(elapsed_s: float, wall_s: float) -> str:
    """The run's duration: its trio clock (simulated seconds under ``--sim``, wall seconds
    against daemons) and the wall clock."""
    return f"  {elapsed_s:.4f} s of run time (simulated under --sim), {wall_s:.2f} s wall"
