"""Calls to daemons through the ``qnet.v1`` stubs: channels, typed errors, bounded streams.

Everything here is synchronous grpcio with a timeout on every call; a server stream is read by
a ``Pump`` thread into a queue so that a case can wait on several streams with one deadline and
cancel them when it is done.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from qnet.interop.tls import BearerToken, ClientCredential

#: The qnet wire protocol version this suite speaks (field 1 of every request and response).
VERSION = 1
#: Trailing-metadata key naming the qnet error type (node.proto, channel.proto).
ERROR_KEY = "qnet-error"

T = TypeVar("T")

_OPTIONS = [("grpc.enable_http_proxy", 0)]


def open_channel(address: str, tls: ClientCredential | None = None) -> grpc.Channel:
    """A channel to ``address``: plaintext, or mutual TLS with ``tls``."""
    if tls is None:
        return grpc.insecure_channel(address, options=_OPTIONS)
    channel = grpc.secure_channel(
        address, tls.channel_credentials(), options=[*_OPTIONS, *tls.options()]
    )
    return channel if tls.token is None else grpc.intercept_channel(channel, BearerToken(tls.token))


@dataclass(frozen=True, slots=True)
class Status:
    """A failed call: its gRPC status code, the ``qnet-error`` type and the message."""

    code: grpc.StatusCode
    error_type: str
    details: str

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        return f"{self.code.name}{kind}: {self.details}"


def status_of(exc: grpc.RpcError) -> Status:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    error_type = ""
    if isinstance(exc, grpc.Call):
        for key, value in exc.trailing_metadata() or ():
            if key == ERROR_KEY:
                error_type = value if isinstance(value, str) else value.decode()
    return Status(code, error_type, details)


def expect_error(call: Callable[[], object]) -> Status | None:
    """Run ``call``; the status it failed with, or None if it succeeded."""
    try:
        call()
    except grpc.RpcError as exc:
        return status_of(exc)
    return None


class StreamEnded(Exception):
    """The stream ended (normally, or with ``status``) before what was waited for came."""

    def __init__(self, status: Status | None) -> None:
        super().__init__(f"stream ended: {status}" if status else "stream ended")
        self.status = status


class Pump(Generic[T]):
    """Reads a server stream in a thread; ``next`` waits (bounded) for the next item."""

    _END = object()

    def __init__(self, call: Iterable[T], name: str = "stream") -> None:
        self._call = call
        self._queue: queue.Queue[object] = queue.Queue()
        self.status: Status | None = None
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pump-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._call:
                self._queue.put(item)
        except grpc.RpcError as exc:
            self.status = status_of(exc)
        except Exception as exc:  # a broken stream must end the pump, never hang the case
            self.status = Status(grpc.StatusCode.UNKNOWN, "", repr(exc))
        finally:
            self.ended.set()
            self._queue.put(self._END)

    def next(self, timeout: float) -> T:
        """The next item; ``TimeoutError`` after ``timeout`` s, ``StreamEnded`` at the end."""
        try:
            item = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError(f"nothing on the stream within {timeout:.1f} s") from None
        if item is self._END:
            self._queue.put(self._END)  # later calls see the end too
            raise StreamEnded(self.status)
        return item  # type: ignore[return-value]

    def cancel(self) -> None:
        cancel = getattr(self._call, "cancel", None)
        if cancel is not None:
            cancel()
        self._thread.join(timeout=5.0)


class RequestQueue(Generic[T]):
    """The request side of a client or bidirectional stream: ``put`` messages, ``close`` to
    half-close. Iterated by grpcio in its own thread."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue[object] = queue.Queue()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            yield item  # type: ignore[misc]
