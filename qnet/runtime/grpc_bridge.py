"""The trio <-> grpcio bridge: the only code in qnet that touches gRPC's threads.

grpcio is used through its synchronous API (DESIGN.md §4). Server handlers are async functions
that run in the trio thread; gRPC's worker threads enter trio and wait. Client calls complete
into trio, so trio cancellation cancels the RPC and trio deadlines become gRPC timeouts. Every
stream crosses the thread boundary through a bounded hand-off, so backpressure holds end to end.

Server handlers must not call ``context.abort``: they raise an exception instead. One with a
``grpc_code`` attribute (see `StatusError`) becomes that status with ``str(exc)`` as details and
its class name in the ``qnet-error`` trailing metadata; any other exception becomes INTERNAL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sys
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, NoReturn, Protocol, TypeVar, TypeVarTuple

import grpc
import trio

__all__ = [
    "ERROR_TYPE_KEY",
    "BidiStream",
    "GrpcBindError",
    "StatusError",
    "TrioGrpcBridge",
    "close_channel",
    "error_type_name",
    "insecure_channel",
    "secure_channel",
    "serve",
    "server_stream",
    "stream_stream",
    "unary_call",
]

log = logging.getLogger(__name__)

ERROR_TYPE_KEY = "qnet-error"
"""Trailing metadata key carrying the class name of a status-carrying server exception."""

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

Metadata = Sequence[tuple[str, str | bytes]]
ErrorMapper = Callable[[grpc.RpcError], BaseException]
ChannelOptions = Sequence[tuple[str, int | str]]


class StatusError(Protocol):
    """An exception that names its gRPC status (``qnet.errors.QnetError`` is one)."""

    grpc_code: grpc.StatusCode


class GrpcBindError(OSError):
    """The gRPC server could not listen on the requested address."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot bind the gRPC server to {address} (address in use or invalid)")
        self.address = address


class _RpcCancelled(Exception):
    """gRPC terminated the RPC: client cancellation, deadline or server stop."""


# --- hand-offs between trio and threads ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class _Stop:
    error: BaseException | None = None  # None: a clean end of stream


def _soon(token: trio.lowlevel.TrioToken, fn: Callable[[*Ts], object], *args: *Ts) -> bool:
    """Run `fn` in the trio thread; False when that trio run is over."""
    try:
        token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        return False
    return True


class _TrioToThread(Generic[T]):
    """Trio tasks hand items to one thread; at most `size` wait, so the producer feels the pace.

    A slot is reserved before the item is made and freed when the thread takes the item. Create
    and use the trio side in the trio thread; `take`/`iterate` run in the consuming thread.

    The two sides share two counters, each written by one side only (items reserved, by trio;
    items taken, by the thread), so a take costs the trio thread nothing unless a producer
    waits for room: a wake-up of the trio thread per item would double the cost of a stream
    message. A producer that finds no room says it waits, then looks again, and the thread
    takes, then looks whether anyone waits: one of them sees the other.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, size: int) -> None:
        self._token = token
        self._size = size
        self._reserved = 0  # trio side only
        self._taken = 0  # consuming thread only
        self._waiting = False
        self._space = trio.Event()
        self._broken = False
        self._queue: queue.SimpleQueue[_Item[T] | _Stop] = queue.SimpleQueue()

    async def reserve(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._reserved - self._taken >= self._size and not self._broken:
            self._waiting = True
            if self._reserved - self._taken < self._size:
                break  # the thread took one meanwhile
            await self._space.wait()
        if self._broken:
            raise trio.BrokenResourceError("the gRPC side of the stream has gone")
        self._reserved += 1

    def push(self, value: T) -> None:
        """Hand over an item; call only after `reserve`."""
        self._queue.put(_Item(value))

    def stop(self, error: BaseException | None = None) -> None:
        self._queue.put(_Stop(error))

    def break_(self) -> None:
        """The consumer has gone: wake and fail every waiting producer."""
        self._broken = True
        self._space.set()

    def _release(self) -> None:
        # Every waiting producer wakes and looks again (and says again that it waits).
        self._waiting = False
        self._space.set()
        self._space = trio.Event()

    def take(self) -> _Item[T] | _Stop:
        msg = self._queue.get()
        if isinstance(msg, _Item):
            self._taken += 1
            if self._waiting:
                _soon(self._token, self._release)
        return msg

    def iterate(self) -> Iterator[T]:
        while isinstance(msg := self.take(), _Item):
            yield msg.value


#: How often a thread blocked on a full hand-off checks that its trio run still goes on.
_STALL_CHECK_S = 1.0


def _nothing() -> None:
    pass


class _ThreadToTrio(Generic[T]):
    """One thread hands items to trio; the thread blocks while `size` items wait unread.

    As in `_TrioToThread`, the sides share two counters, each written by one side only (items
    put, by the thread; items taken, by trio), so an item costs no lock: the thread takes the
    condition only when it finds no room, and trio only when the thread says it waits. The
    thread queues items and asks trio to move them on only when no such call is pending, so a
    burst costs the trio thread one wake-up, not one per item.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, size: int) -> None:
        self._token = token
        self._size = size
        self._cond = threading.Condition()
        self._put = 0  # producing thread only
        self._taken = 0  # trio side only
        self._waiting = False
        self._closed = False
        self._queued: deque[_Item[T] | _Stop] = deque()
        self._scheduled = False
        # Unbounded on purpose: the counters above are the bound, and delivery must not block.
        self._send, self._recv = trio.open_memory_channel[_Item[T] | _Stop](math.inf)
        self._final: _Stop | None = None

    def put(self, value: T) -> bool:
        """Thread side; False once the trio side has closed (stop producing then)."""
        if self._put - self._taken >= self._size and not self._closed:
            with self._cond:
                # Said before looking again: trio, taking one meanwhile, then sees it.
                self._waiting = True
                while self._put - self._taken >= self._size and not self._closed:
                    # A trio run that ended never takes again: look now and then.
                    if not self._cond.wait(_STALL_CHECK_S) and not _soon(self._token, _nothing):
                        self._closed = True
                self._waiting = False
        if self._closed:
            return False
        self._put += 1
        return self._queue(_Item(value))

    def stop(self, error: BaseException | None = None) -> None:
        self._queue(_Stop(error))

    def _queue(self, msg: _Item[T] | _Stop) -> bool:
        self._queued.append(msg)
        if self._scheduled:
            return True  # the pending call moves this one on too
        self._scheduled = True
        return _soon(self._token, self._deliver)

    def _deliver(self) -> None:
        # Cleared before draining: an item queued after this line schedules another call.
        self._scheduled = False
        while self._queued:
            msg = self._queued.popleft()
            # The consumer may have left; a raise here would crash the trio run.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._send.send_nowait(msg)

    async def get(self) -> _Item[T] | _Stop:
        if self._final is not None:
            await trio.lowlevel.checkpoint()
            return self._final
        msg = await self._recv.receive()
        if isinstance(msg, _Item):
            self._taken += 1
            if self._waiting:
                with self._cond:
                    self._cond.notify()
        else:
            self._final = msg
        return msg

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._recv.close()


class _Received(Generic[T]):
    """The trio end of a `_ThreadToTrio` as an async iterator, with errors mapped."""

    def __init__(self, inbox: _ThreadToTrio[T], mapper: ErrorMapper | None = None) -> None:
        self._inbox = inbox
        self._mapper = mapper

    def __aiter__(self) -> _Received[T]:
        return self

    async def __anext__(self) -> T:
        msg = await self._inbox.get()
        if isinstance(msg, _Item):
            return msg.value
        if msg.error is None:
            raise StopAsyncIteration
        if isinstance(msg.error, grpc.RpcError):
            await _raise_rpc_error(msg.error, self._mapper)
        raise msg.error


# --- server side ---------------------------------------------------------------------------


class _Watch:
    """A gRPC context callback that cancels the trio side of an RPC that gRPC terminated."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self.scope = trio.CancelScope()
        self.finished = False  # the trio side is done: nothing to cancel

    def __call__(self) -> None:
        if not self.finished:
            _soon(self._token, self.scope.cancel)


def _root_cause(exc: BaseException) -> BaseException:
    # A handler's nursery wraps a single typed error in a group; the status lives inside.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the RPC with the status that `exc` stands for."""
    exc = _root_cause(exc)
    if isinstance(exc, _RpcCancelled):
        context.abort(grpc.StatusCode.CANCELLED, "RPC cancelled")
    if isinstance(exc, trio.RunFinishedError | trio.Cancelled):
        context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    code = getattr(exc, "grpc_code", None)
    if isinstance(code, grpc.StatusCode):
        trailing = tuple(context.trailing_metadata() or ())
        context.set_trailing_metadata((*trailing, (ERROR_TYPE_KEY, type(exc).__name__)))
        context.abort(code, str(exc))
    chosen = getattr(context, "code", lambda: None)()
    if chosen is not None and isinstance(exc, Exception):
        raise exc  # the handler set a status itself; let gRPC report it
    log.error("gRPC handler failed", exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


async def _aclose(iterator: AsyncIterator[object]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


_Opener = Callable[[], tuple[AsyncIterator[T], Callable[[], None] | None]]


class TrioGrpcBridge:
    """Turns async handlers into the synchronous callables a ``grpc.Server`` wants.

    Construct it in the trio thread; the wrapped handlers then run there. Each wrapper fits
    ``grpc.*_rpc_method_handler`` or a generated servicer's method slot.
    """

    def __init__(self, *, stream_buffer: int = 16) -> None:
        if stream_buffer < 1:
            raise ValueError("stream_buffer must be at least 1")
        self._token = trio.lowlevel.current_trio_token()
        self._buffer = stream_buffer

    def unary_unary(
        self, handler: Callable[[Req, grpc.ServicerContext], Awaitable[Resp]]
    ) -> Callable[[Req, grpc.ServicerContext], Resp]:
        def behaviour(request: Req, context: grpc.ServicerContext) -> Resp:
            watch = _Watch(self._token)
            if not context.add_callback(watch):
                _abort(context, _RpcCancelled())
            try:
                return trio.from_thread.run(
                    _run_unary, handler, request, context, watch.scope, trio_token=self._token
                )
            except (Exception, trio.Cancelled) as exc:
                _abort(context, exc)
            finally:
                watch.finished = True

        return behaviour

    def unary_stream(
        self, handler: Callable[[Req, grpc.ServicerContext], AsyncIterator[Resp]]
    ) -> Callable[[Req, grpc.ServicerContext], Iterator[Resp]]:
        """Wrap an async generator (or any async-iterator factory) of responses."""

        def behaviour(request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
            return self._stream_out(context, lambda: (handler(request, context), None))

        return behaviour

    def stream_stream(
        self, handler: Callable[[AsyncIterator[Req], grpc.ServicerContext], AsyncIterator[Resp]]
    ) -> Callable[[Iterator[Req], grpc.ServicerContext], Iterator[Resp]]:
        """Wrap an async generator that reads requests from the async iterator it is given."""

        def behaviour(requests: Iterator[Req], context: grpc.ServicerContext) -> Iterator[Resp]:
            def open_responses() -> tuple[AsyncIterator[Resp], Callable[[], None]]:
                inbox = _ThreadToTrio[Req](self._token, self._buffer)
                # The RPC's own worker thread is busy sending responses, so requests need one.
                threading.Thread(
                    target=_feed, args=(requests, inbox), name="qnet-grpc-feed", daemon=True
                ).start()
                return handler(_Received(inbox), context), inbox.close

            return self._stream_out(context, open_responses)

        return behaviour

    def _stream_out(self, context: grpc.ServicerContext, opener: _Opener[Resp]) -> Iterator[Resp]:
        watch = _Watch(self._token)
        if not context.add_callback(watch):
            _abort(context, _RpcCancelled())
        try:
            outbox = trio.from_thread.run_sync(
                self._spawn_producer, opener, watch.scope, trio_token=self._token
            )
        except (Exception, trio.Cancelled) as exc:
            _abort(context, exc)
        try:
            while isinstance(msg := outbox.take(), _Item):
                yield msg.value
            watch.finished = True
            if msg.error is not None:
                _abort(context, msg.error)
        finally:
            watch()  # gRPC stopped iterating early: stop the producer

    def _spawn_producer(
        self, opener: _Opener[Resp], scope: trio.CancelScope
    ) -> _TrioToThread[Resp]:
        outbox = _TrioToThread[Resp](self._token, self._buffer)
        try:
            trio.lowlevel.spawn_system_task(_produce, opener, outbox, scope)
        except RuntimeError as exc:  # the system nursery closes as the run ends
            raise trio.RunFinishedError("trio is shutting down") from exc
        return outbox


async def _run_unary(
    handler: Callable[[Req, grpc.ServicerContext], Awaitable[Resp]],
    request: Req,
    context: grpc.ServicerContext,
    scope: trio.CancelScope,
) -> Resp:
    with scope:
        return await handler(request, context)
    raise _RpcCancelled()


async def _produce(opener: _Opener[T], outbox: _TrioToThread[T], scope: trio.CancelScope) -> None:
    """Pull a response stream into `outbox`, a slot at a time; always ends it with a `_Stop`."""
    error: BaseException | None = None
    cleanup: Callable[[], None] | None = None
    try:
        with scope:
            responses, cleanup = opener()
            try:
                while True:
                    await outbox.reserve()
                    try:
                        value = await anext(responses)
                    except StopAsyncIteration:
                        break
                    outbox.push(value)
            finally:
                await _aclose(responses)
        if scope.cancelled_caught:
            error = _RpcCancelled()
    except BaseException as exc:
        error = exc
        if not isinstance(exc, Exception):
            raise  # trio's own cancellation at shutdown; a system task must not swallow it
    finally:
        if cleanup is not None:
            cleanup()
        outbox.stop(error)


def _feed(requests: Iterator[T], inbox: _ThreadToTrio[T]) -> None:
    try:
        for request in requests:
            if not inbox.put(request):
                return
    except grpc.RpcError:
        inbox.stop(_RpcCancelled())  # the request iterator fails when the RPC is cancelled
    except Exception as exc:
        inbox.stop(exc)
    else:
        inbox.stop()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _size_options(max_message_bytes: int | None) -> list[tuple[str, int | str]]:
    if max_message_bytes is None:
        return []
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


_SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.so_reuseport", 0),  # otherwise a second server silently shares a busy port
    # Accept the keepalive pings `insecure_channel` sends, even on idle connections.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


async def serve(
    register: Callable[[grpc.Server], None],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_workers: int = 64,
    max_message_bytes: int | None = None,
    grace: float = 1.0,
    options: ChannelOptions = (),
    credentials: grpc.ServerCredentials | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a gRPC server until cancelled; ``task_status.started`` gets the bound port.
    With ``credentials`` it serves TLS (``qnet.security.tls``), else plaintext.

    Every open RPC holds one of `max_workers` threads, long-lived streams included. On
    cancellation the server stops with `grace` seconds for open RPCs, which are then cancelled,
    and this returns once every worker thread has finished.
    """
    address = _address(host, port)
    executor = ThreadPoolExecutor(max_workers, thread_name_prefix="qnet-grpc-server")
    server = grpc.server(
        executor, options=[*_SERVER_OPTIONS, *_size_options(max_message_bytes), *options]
    )
    try:
        register(server)
        try:
            if credentials is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise GrpcBindError(address) from exc
        if bound == 0:  # older grpcio reports failure this way
            raise GrpcBindError(address)
        server.start()
        task_status.started(bound)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_shutdown, server, executor, grace)


def _shutdown(server: grpc.Server, executor: ThreadPoolExecutor, grace: float) -> None:
    server.stop(grace).wait()
    # Cancelled RPCs may still be unwinding in workers; grpc does not own the pool, we do.
    executor.shutdown(wait=True)


# --- client side ---------------------------------------------------------------------------


def insecure_channel(
    address: str, *, max_message_bytes: int | None = None, options: ChannelOptions = ()
) -> grpc.Channel:
    """A plaintext channel that ignores proxy settings and detects dead peers by keepalive."""
    return grpc.insecure_channel(address, options=_client_options(max_message_bytes, options))


def secure_channel(
    address: str,
    credentials: grpc.ChannelCredentials,
    *,
    max_message_bytes: int | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """`insecure_channel` over TLS with ``credentials`` (``qnet.security.tls`` makes them)."""
    return grpc.secure_channel(
        address, credentials, options=_client_options(max_message_bytes, options)
    )


def _client_options(
    max_message_bytes: int | None, options: ChannelOptions
) -> list[tuple[str, int | str]]:
    return [
        ("grpc.enable_http_proxy", 0),  # loopback and cluster traffic must not go via a proxy
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        *_size_options(max_message_bytes),
        *options,
    ]


async def close_channel(channel: grpc.Channel) -> None:
    """Close `channel` (cancelling its RPCs) without blocking the trio thread."""
    await trio.to_thread.run_sync(channel.close)


def error_type_name(error: grpc.RpcError) -> str | None:
    """The server exception's class name from the ``qnet-error`` trailing metadata, if any."""
    trailing = getattr(error, "trailing_metadata", lambda: None)() or ()
    for entry in trailing:
        if entry.key == ERROR_TYPE_KEY:
            value = entry.value
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _timeout() -> float | None:
    """The caller's trio deadline as a gRPC timeout, so the server stops working when it passes."""
    deadline = trio.current_effective_deadline()
    # A MockClock's virtual seconds mean nothing to gRPC's real clock.
    # trio.testing is looked up, not imported: importing it pulls in pytest, ~80 ms per daemon.
    testing = sys.modules.get("trio.testing")
    mock = testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)
    if math.isinf(deadline) or mock:
        return None
    return max(deadline - trio.current_time(), 0.0)


def _cancel(rpc: grpc.RpcContext) -> None:
    rpc.cancel()  # type: ignore[no-untyped-call]  # unannotated in grpc-stubs


def _metadata(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...] | None:
    return None if metadata is None else tuple(metadata)


async def _raise_rpc_error(error: grpc.RpcError, mapper: ErrorMapper | None) -> NoReturn:
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        # The trio deadline this timeout came from has passed too: report it the trio way.
        await trio.lowlevel.checkpoint_if_cancelled()
    if mapper is None:
        raise error
    raise mapper(error) from error


async def unary_call(
    multicallable: grpc.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    metadata: Metadata | None = None,
    error_mapper: ErrorMapper | None = None,
) -> Resp:
    """Make one unary RPC; cancelling the calling task cancels the RPC.

    Failures raise the ``grpc.RpcError``, or ``error_mapper(error)`` when given.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    token = trio.lowlevel.current_trio_token()
    future = multicallable.future(request, timeout=_timeout(), metadata=_metadata(metadata))
    done = trio.Event()

    def wake(_: object) -> None:
        _soon(token, done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        _cancel(future)
        raise
    try:
        return future.result()
    except grpc.RpcError as error:
        await _raise_rpc_error(error, error_mapper)


@asynccontextmanager
async def _pumped(
    call: grpc.CallIterator[Resp],
    buffer: int,
    mapper: ErrorMapper | None,
    on_end: Callable[[], None] | None = None,
) -> AsyncGenerator[_Received[Resp], None]:
    """Responses of `call`, pumped by a thread of ours that never outlives this context."""
    token = trio.lowlevel.current_trio_token()
    inbox = _ThreadToTrio[Resp](token, buffer)
    finished = trio.Event()

    def pump() -> None:
        try:
            for response in call:
                if not inbox.put(response):
                    return
            inbox.stop()
        except Exception as exc:
            inbox.stop(exc)
        finally:
            if on_end is not None:
                _soon(token, on_end)
            _soon(token, finished.set)

    threading.Thread(target=pump, name="qnet-grpc-pump", daemon=True).start()
    try:
        yield _Received(inbox, mapper)
    finally:
        _cancel(call)  # a no-op once the call has ended; else it ends the pump's iteration
        inbox.close()
        with trio.CancelScope(shield=True):
            await finished.wait()


@asynccontextmanager
async def server_stream(
    multicallable: grpc.UnaryStreamMultiCallable[Req, Resp],
    request: Req,
    *,
    metadata: Metadata | None = None,
    buffer: int = 16,
    error_mapper: ErrorMapper | None = None,
) -> AsyncGenerator[AsyncIterator[Resp], None]:
    """Start a server-streaming RPC and yield its responses; leaving cancels the RPC."""
    await trio.lowlevel.checkpoint_if_cancelled()
    call = multicallable(request, timeout=_timeout(), metadata=_metadata(metadata))
    async with _pumped(call, buffer, error_mapper) as responses:
        yield responses


class BidiStream(Generic[Req, Resp]):
    """The trio face of one bidirectional-streaming RPC: `send`, then iterate the responses."""

    def __init__(self, outbox: _TrioToThread[Req], responses: _Received[Resp]) -> None:
        self._outbox = outbox
        self._responses = responses
        self._done_writing = False

    async def send(self, request: Req) -> None:
        """Send one request, waiting while `buffer` requests are still unsent.

        Raises trio.ClosedResourceError after `done_writing`, and trio.BrokenResourceError once
        the RPC has ended.
        """
        if self._done_writing:
            raise trio.ClosedResourceError("done_writing() was called")
        await self._outbox.reserve()
        self._outbox.push(request)

    def done_writing(self) -> None:
        """Half-close: the server sees the end of the request stream."""
        if not self._done_writing:
            self._done_writing = True
            self._outbox.stop()

    def __aiter__(self) -> AsyncIterator[Resp]:
        return self._responses


@asynccontextmanager
async def stream_stream(
    multicallable: grpc.StreamStreamMultiCallable[Req, Resp],
    *,
    metadata: Metadata | None = None,
    buffer: int = 16,
    error_mapper: ErrorMapper | None = None,
) -> AsyncGenerator[BidiStream[Req, Resp], None]:
    """Start a bidirectional-streaming RPC; leaving the context cancels it if still open."""
    await trio.lowlevel.checkpoint_if_cancelled()
    outbox = _TrioToThread[Req](trio.lowlevel.current_trio_token(), buffer)
    call = multicallable(outbox.iterate(), timeout=_timeout(), metadata=_metadata(metadata))
    try:
        async with _pumped(call, buffer, error_mapper, on_end=outbox.break_) as responses:
            yield BidiStream(outbox, responses)
    finally:
        outbox.stop()  # gRPC's request thread waits on the outbox; let it finish
