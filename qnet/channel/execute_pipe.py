"""A session's Execute requests over one long-lived ``ExecuteStream``, pipelined.

A node executes several times per end-to-end pair (arming after each herald, swaps, frees,
measurements), and grpcio's cost per unary call is about twice its cost per stream message,
so the session sends them all down one bidirectional stream. The backend answers in request
order; callers queue a slot each, in the order their requests went out, and one reader task
hands each response to the oldest slot. Callers may run concurrently, as with unary calls.

A backend without ``ExecuteStream`` (UNIMPLEMENTED) gets unary ``Execute`` calls from then on:
it ran nothing of what it refused, so those requests are simply sent again that way. Any other
end of the stream fails the requests still waiting with its error, as a failed unary call
would; the next request opens a new stream.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import grpc
import trio

from qnet.errors import ProtocolError, Unreachable
from qnet.runtime.grpc_bridge import BidiStream, stream_stream, unary_call
from qnet.v1 import channel_pb2 as pb
from qnet.v1 import channel_pb2_grpc as pb_grpc

log = logging.getLogger("qnet.channel")


class _Unimplemented(Exception):
    """The backend does not serve ExecuteStream."""


class _Slot:
    __slots__ = ("done", "error", "response")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: pb.ExecuteResponse | None = None
        self.error: BaseException | None = None


class _Conn:
    """One open stream and the slots of the requests sent on it, oldest first."""

    __slots__ = ("ended", "pending", "stream")

    def __init__(self, stream: BidiStream[pb.ExecuteRequest, pb.ExecuteResponse]) -> None:
        self.stream = stream
        self.pending: deque[_Slot] = deque()
        self.ended = False


class ExecutePipe:
    """``execute`` for one session; make and use it in the trio thread of its client."""

    def __init__(
        self,
        stub: pb_grpc.ChannelStub,
        error_mapper: Callable[[grpc.RpcError], BaseException],
    ) -> None:
        self._stub = stub
        self._map = error_mapper
        self._conn: _Conn | None = None
        self._opening: trio.Event | None = None
        self._send_lock = trio.Lock()
        self._unary = False

    def _map_stream_error(self, error: grpc.RpcError) -> BaseException:
        code = error.code() if isinstance(error, grpc.Call) else None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return _Unimplemented()
        return self._map(error)

    async def execute(self, request: pb.ExecuteRequest) -> pb.ExecuteResponse:
        conn = None if self._unary else await self._open()
        if conn is not None:
            slot = _Slot()
            sent = False
            # Requests go out in the order of the slots: responses come back in that order.
            async with self._send_lock:
                if not conn.ended:
                    conn.pending.append(slot)
                    try:
                        await conn.stream.send(request)
                        sent = True
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # the stream has just ended: the request was not sent
                    finally:
                        if not sent and slot in conn.pending:
                            conn.pending.remove(slot)
            if sent:
                await slot.done.wait()
                if slot.response is not None:
                    return slot.response
                if not isinstance(slot.error, _Unimplemented):
                    assert slot.error is not None
                    raise slot.error
            # Not sent, or refused unrun by a backend without the stream: run it unary.
        return await unary_call(self._stub.Execute, request, error_mapper=self._map)

    async def _open(self) -> _Conn | None:
        """The open stream, opening it if there is none (None: use unary calls)."""
        if self._conn is not None:
            return self._conn
        if self._unary:
            return None
        if self._opening is None:
            self._opening = trio.Event()
            try:
                trio.lowlevel.spawn_system_task(self._run, self._opening)
            except RuntimeError:  # the run is ending: no new system tasks
                self._opening = None
                return None
        await self._opening.wait()
        return self._conn  # None if it failed to open: this request goes unary

    async def _run(self, opened: trio.Event) -> None:
        """Own the stream: hand its responses to the slots until it ends."""
        error: BaseException = Unreachable("the channel backend ended the ExecuteStream")
        conn: _Conn | None = None
        try:
            async with stream_stream(
                self._stub.ExecuteStream, error_mapper=self._map_stream_error
            ) as stream:
                conn = self._conn = _Conn(stream)
                opened.set()
                async for response in stream:
                    if not conn.pending:
                        raise ProtocolError("an ExecuteStream response to no request")
                    slot = conn.pending.popleft()
                    slot.response = response
                    slot.done.set()
        except _Unimplemented as exc:
            self._unary = True
            error = exc
        except Exception as exc:  # a system task must not raise: the callers get it instead
            error = exc
        finally:
            if self._conn is conn:
                self._conn = None
            self._opening = None
            opened.set()
            if conn is not None:
                conn.ended = True
                while conn.pending:
                    slot = conn.pending.popleft()
                    slot.error = error
                    slot.done.set()
