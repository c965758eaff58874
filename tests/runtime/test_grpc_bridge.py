"""The trio <-> grpcio bridge against a real gRPC server on loopback (bytes in, bytes out)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from functools import partial
from typing import NoReturn, cast

import grpc
import pytest
import trio
import trio.testing

from qnet.runtime.grpc_bridge import (
    GrpcBindError,
    TrioGrpcBridge,
    _Item,
    _ThreadToTrio,
    close_channel,
    error_type_name,
    insecure_channel,
    serve,
    server_stream,
    stream_stream,
    unary_call,
)

SERVICE = "test.Bridge"
BUFFER = 4  # the server bridge's stream buffer


class NotThere(Exception):
    """A typed error carrying its status, like qnet.errors.QnetError."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class Service:
    def __init__(self) -> None:
        self.started = trio.Event()
        self.finished = trio.Event()
        self.time_remaining: float | None = None
        self.produced = 0

    async def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    async def not_there(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise NotThere(request.decode())

    async def crash(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise ValueError("kaput")

    async def hang(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.time_remaining = context.time_remaining()
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.finished.set()

    async def count(self, request: bytes, context: grpc.ServicerContext) -> AsyncIterator[bytes]:
        """Yield `request` numbers, then fail with NotThere if asked to ("3!")."""
        self.started.set()
        try:
            for i in range(int(request.rstrip(b"!"))):
                self.produced += 1
                yield b"%d" % i
            if request.endswith(b"!"):
                raise NotThere("ran out")
        finally:
            self.finished.set()

    async def upper(
        self, requests: AsyncIterator[bytes], context: grpc.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request.upper()


def methods(bridge: TrioGrpcBridge, svc: Service) -> grpc.GenericRpcHandler[bytes, bytes]:
    unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": unary(bridge.unary_unary(svc.echo)),
            "NotThere": unary(bridge.unary_unary(svc.not_there)),
            "Crash": unary(bridge.unary_unary(svc.crash)),
            "Hang": unary(bridge.unary_unary(svc.hang)),
            "Count": grpc.unary_stream_rpc_method_handler(bridge.unary_stream(svc.count)),
            "Upper": grpc.stream_stream_rpc_method_handler(bridge.stream_stream(svc.upper)),
        },
    )


def registrar(svc: Service) -> Callable[[grpc.Server], None]:
    handler = methods(TrioGrpcBridge(stream_buffer=BUFFER), svc)

    def register(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    return register


@asynccontextmanager
async def running(svc: Service) -> AsyncGenerator[grpc.Channel, None]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, registrar(svc))
        channel = insecure_channel(f"127.0.0.1:{port}")
        try:
            yield channel
        finally:
            await close_channel(channel)
            nursery.cancel_scope.cancel()


def unary(channel: grpc.Channel, name: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(f"/{SERVICE}/{name}", None, None)


def streaming(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(f"/{SERVICE}/Count", None, None)


def bidi(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable[bytes, bytes]:
    return channel.stream_stream(f"/{SERVICE}/Upper", None, None)


@pytest.mark.trio
async def test_unary_round_trip() -> None:
    with trio.fail_after(10):
        async with running(Service()) as channel:
            assert await unary_call(unary(channel, "Echo"), b"hello") == b"hello"
            assert await unary_call(unary(channel, "Echo"), b"", metadata=[("k", "v")]) == b""


@pytest.mark.trio
async def test_status_error_keeps_code_message_and_type() -> None:
    with trio.fail_after(10):
        async with running(Service()) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                await unary_call(unary(channel, "NotThere"), b"no qubit 7")
            error = caught.value
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert error.details() == "no qubit 7"
            assert error_type_name(error) == "NotThere"

            def mapper(err: grpc.RpcError) -> Exception:
                return LookupError(f"{error_type_name(err)}: {err.details()}")

            with pytest.raises(LookupError, match="NotThere: again"):
                await unary_call(unary(channel, "NotThere"), b"again", error_mapper=mapper)
            assert await unary_call(unary(channel, "Echo"), b"still serving") == b"still serving"


@pytest.mark.trio
async def test_unexpected_error_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10), caplog.at_level(logging.ERROR):
        async with running(Service()) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                await unary_call(unary(channel, "Crash"), b"")
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert caught.value.details() == "ValueError: kaput"
            assert error_type_name(caught.value) is None
            assert await unary_call(unary(channel, "Echo"), b"ok") == b"ok"
    failures = [r for r in caplog.records if r.name == "qnet.runtime.grpc_bridge"]
    assert failures
    assert failures[0].exc_info is not None


@pytest.mark.trio
async def test_client_cancel_cancels_server_task() -> None:
    svc = Service()
    with trio.fail_after(10):
        async with running(svc) as channel, trio.open_nursery() as nursery:
            nursery.start_soon(unary_call, unary(channel, "Hang"), b"")
            await svc.started.wait()
            # The enclosing fail_after(10) reached the server as the gRPC timeout.
            assert svc.time_remaining is not None
            assert 5 < svc.time_remaining <= 10
            nursery.cancel_scope.cancel()
            await svc.finished.wait()


@pytest.mark.trio
async def test_trio_deadline_becomes_grpc_timeout() -> None:
    svc = Service()
    with trio.fail_after(10):
        async with running(svc) as channel:
            with trio.move_on_after(0.5) as scope:
                await unary_call(unary(channel, "Hang"), b"")
            assert scope.cancelled_caught
            assert svc.time_remaining is not None
            # gRPC converts deadlines between monotonic and wall clocks: allow that slack.
            assert 0 < svc.time_remaining < 0.55
            await svc.finished.wait()


def map_by_type(kind: type[Exception], error: grpc.RpcError) -> Exception:
    return kind(error_type_name(error))


@pytest.mark.trio
async def test_server_stream_delivers_in_order_then_maps_error() -> None:
    with trio.fail_after(10):
        async with running(Service()) as channel:
            async with server_stream(streaming(channel), b"50") as responses:
                assert [r async for r in responses] == [b"%d" % i for i in range(50)]
            got = []

            async def read_all() -> None:
                mapper = partial(map_by_type, LookupError)
                async with server_stream(streaming(channel), b"3!", error_mapper=mapper) as rs:
                    async for r in rs:
                        got.append(r)

            with pytest.raises(LookupError, match="NotThere"):
                await read_all()
            assert got == [b"0", b"1", b"2"]


class FakeContext:
    """Just enough of grpc.ServicerContext to drive a bridge wrapper by hand."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.aborted_with: grpc.StatusCode | None = None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.aborted_with = code
        raise RuntimeError(details)

    def trailing_metadata(self) -> None:
        return None


@pytest.mark.trio
async def test_server_stream_backpressure_bounds_the_producer() -> None:
    svc = Service()
    bridge = TrioGrpcBridge(stream_buffer=BUFFER)
    responses = bridge.unary_stream(svc.count)(b"1000", cast(grpc.ServicerContext, FakeContext()))
    assert isinstance(responses, Generator)
    with trio.fail_after(10):
        for taken in range(1, 4):
            # The test plays gRPC's slow worker thread, taking one response at a time.
            assert await trio.to_thread.run_sync(next, responses) == b"%d" % (taken - 1)
            # Every trio task blocked: the producer has stopped, at the bound and not beyond.
            await trio.testing.wait_all_tasks_blocked()
            assert svc.produced == taken + BUFFER
        responses.close()  # gRPC drops the iterator when the client goes away
        await svc.finished.wait()
    assert svc.produced == 3 + BUFFER


@pytest.mark.trio
async def test_leaving_a_server_stream_ends_the_server_generator() -> None:
    svc = Service()
    with trio.fail_after(10):
        async with running(svc) as channel:
            async with server_stream(streaming(channel), b"1000000000", buffer=2) as responses:
                assert await anext(aiter(responses)) == b"0"
            await svc.finished.wait()
            assert await unary_call(unary(channel, "Echo"), b"after") == b"after"


@pytest.mark.trio
async def test_stream_stream_echo_with_backpressure_both_ways() -> None:
    requests = [b"msg %d" % i for i in range(200)]
    with trio.fail_after(10):
        async with running(Service()) as channel, stream_stream(bidi(channel), buffer=2) as call:

            async def send_all() -> None:
                for request in requests:
                    await call.send(request)
                call.done_writing()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                assert [r async for r in call] == [r.upper() for r in requests]
            with pytest.raises(trio.ClosedResourceError):
                await call.send(b"late")


@pytest.mark.trio
async def test_busy_port_gives_a_clear_error() -> None:
    with socket.socket() as holder, trio.fail_after(10):
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(GrpcBindError, match=f"127.0.0.1:{port}") as caught:
            await serve(lambda server: None, port=port)
        assert isinstance(caught.value, OSError)
        assert caught.value.address == f"127.0.0.1:{port}"


def test_finished_trio_run_gives_unavailable() -> None:
    async def make() -> TrioGrpcBridge:
        return TrioGrpcBridge()

    bridge = trio.run(make)
    context = FakeContext()
    handler = bridge.unary_unary(Service().echo)
    with pytest.raises(RuntimeError, match="shutting down"):
        handler(b"", cast(grpc.ServicerContext, context))
    assert context.aborted_with == grpc.StatusCode.UNAVAILABLE


def bridge_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    # trio's thread cache keeps idle workers for a while by design; they are not ours.
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]


@pytest.mark.trio
async def test_shutdown_cancels_open_rpcs_and_leaves_no_threads() -> None:
    before = set(threading.enumerate())
    svc = Service()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve, registrar(svc), grace=0.1))
            channel = insecure_channel(f"127.0.0.1:{port}")
            assert await unary_call(unary(channel, "Echo"), b"x") == b"x"
            async with server_stream(streaming(channel), b"1000000000") as responses:
                await anext(aiter(responses))
            async with stream_stream(bidi(channel)) as call:
                await call.send(b"a")
                assert await anext(aiter(call)) == b"A"
            # A plain gRPC call the client never cancels: only the server's stop can end it.
            pending = unary(channel, "Hang").future(b"")
            await svc.started.wait()
            nursery.cancel_scope.cancel()
        await svc.finished.wait()
        with pytest.raises(grpc.RpcError) as caught:
            await trio.to_thread.run_sync(partial(pending.result, timeout=5))
        error = caught.value
        assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        await close_channel(channel)
        for thread in bridge_threads(before):
            await trio.to_thread.run_sync(thread.join, 5)
        assert [t.name for t in bridge_threads(before)] == []


@pytest.mark.trio
async def test_thread_to_trio_hand_off_keeps_order_and_bounds_the_thread() -> None:
    """A thread's items reach trio in order, the thread never gets more than the bound ahead
    of trio (it blocks instead), and once trio closes the hand-off ``put`` says so."""
    size = 3
    inbox = _ThreadToTrio[int](trio.lowlevel.current_trio_token(), size)
    ahead: list[int] = []
    taken = [0]

    def produce() -> bool:
        for i in range(200):
            if not inbox.put(i):
                return False
            ahead.append(i + 1 - taken[0])
        inbox.stop()
        return True

    got: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, produce)
            while True:
                msg = await inbox.get()
                if not isinstance(msg, _Item):
                    break
                got.append(msg.value)
                taken[0] += 1
                if len(got) % 7 == 0:
                    await trio.sleep(0.001)  # a slow consumer: the thread must wait
    assert got == list(range(200))
    assert max(ahead) <= size + 1  # the item just put, and at most `size` unread before it

    closed = _ThreadToTrio[int](trio.lowlevel.current_trio_token(), 1)
    closed.close()
    assert not await trio.to_thread.run_sync(closed.put, 1)
