"""Serve a proto service from async handlers, straight from its descriptor.

Registering from the descriptor (rather than through the generated servicer classes) lets one
deserializer catch malformed requests: they reach the handler wrapper as ``Malformed`` and are
answered INVALID_ARGUMENT naming the message type, instead of grpc's anonymous INTERNAL.

Bidirectional streams are served too. Their handler gets the requests as an async iterator and
sees a malformed request as a ``Malformed`` item in it, so it chooses whether one bad message
ends the stream (raise ``malformed_error(item)``) or is dropped and counted (a peer transport).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from qnet.errors import InvalidArgument
from qnet.runtime.grpc_bridge import TrioGrpcBridge

UnaryHandler = Callable[[Any], Awaitable[Message]]
StreamHandler = Callable[[Any], AsyncIterator[Message]]
#: Takes the requests (each a message or ``Malformed``), yields the responses.
BidiHandler = Callable[[AsyncIterator[Any]], AsyncIterator[Message]]
# grpc-stubs makes these generic; grpcio at run time does not, hence the string alias.
RpcHandler: TypeAlias = "grpc.GenericRpcHandler[Any, Any]"
#: Called with the RPC's context in the trio task that serves it, before the handler; raising
#: (a typed ``qnet.errors`` error) refuses the RPC. ``qnet.security.tls`` makes the guards.
Guard = Callable[[grpc.ServicerContext], None]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that did not parse: its proto type's full name and the parser's complaint."""

    type_name: str
    error: str


def malformed_error(request: Malformed) -> InvalidArgument:
    return InvalidArgument(f"malformed {request.type_name}: {request.error}")


def _deserializer(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Malformed(cls.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)

    return parse


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _checked(request: object) -> None:
    if isinstance(request, Malformed):
        raise malformed_error(request)


def service_handler(
    service: ServiceDescriptor,
    bridge: TrioGrpcBridge,
    handlers: Mapping[str, UnaryHandler | StreamHandler | BidiHandler],
    *,
    guard: Guard | None = None,
) -> RpcHandler:
    """A generic handler serving every method of ``service`` (unary, server-streaming or
    bidirectional) with the async function of the same name in ``handlers``; a missing one,
    or a client-streaming method with a single response, is a startup error. ``guard``, if
    given, checks every RPC first (without one, nothing is added to a call)."""
    missing = {m.name for m in service.methods} - set(handlers)
    if missing:
        raise ValueError(f"{service.full_name}: no handler for {sorted(missing)}")
    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming and not method.server_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not served here")
        parse = _deserializer(GetMessageClass(method.input_type))
        fn = handlers[method.name]
        if method.client_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(
                bridge.stream_stream(_guarded(_bidi(fn), guard, deferred=True)),
                request_deserializer=parse,
                response_serializer=_serialize,
            )
        elif method.server_streaming:
            methods[method.name] = grpc.unary_stream_rpc_method_handler(
                bridge.unary_stream(_guarded(_stream(fn), guard)),
                request_deserializer=parse,
                response_serializer=_serialize,
            )
        else:
            methods[method.name] = grpc.unary_unary_rpc_method_handler(
                bridge.unary_unary(_guarded(_unary(fn), guard)),
                request_deserializer=parse,
                response_serializer=_serialize,
            )
    return grpc.method_handlers_generic_handler(service.full_name, methods)


def _unary(fn: Any) -> Callable[[object, grpc.ServicerContext], Awaitable[Message]]:
    async def handle(request: object, _context: grpc.ServicerContext) -> Message:
        _checked(request)
        result: Message = await fn(request)
        return result

    return handle


def _stream(fn: Any) -> Callable[[object, grpc.ServicerContext], AsyncIterator[Message]]:
    async def handle(request: object, _context: grpc.ServicerContext) -> AsyncIterator[Message]:
        _checked(request)
        async for item in fn(request):
            yield item

    return handle


def _bidi(fn: Any) -> Callable[[AsyncIterator[Any], grpc.ServicerContext], AsyncIterator[Message]]:
    def handle(
        requests: AsyncIterator[Any], _context: grpc.ServicerContext
    ) -> AsyncIterator[Message]:
        # The handler's own generator, so the bridge's aclose reaches it directly.
        responses: AsyncIterator[Message] = fn(requests)
        return responses

    return handle


_Behaviour = TypeVar("_Behaviour", bound=Callable[..., Any])


def _guarded(handle: _Behaviour, guard: Guard | None, *, deferred: bool = False) -> _Behaviour:
    """``handle`` with ``guard`` run first; ``handle`` itself when there is no guard. The guard
    runs in the trio task that then runs the handler, so what it sets in a context variable
    (the caller's identity) is the handler's to read and nobody else's. ``deferred`` (for
    bidirectional streams): a refusal is raised by the response stream, so that the bridge
    still gets to release the request stream it has started."""
    if guard is None:
        return handle

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if deferred:
            try:
                guard(context)
            except Exception as exc:
                return _refused(exc)
        else:
            guard(context)
        return handle(request, context)

    return cast(_Behaviour, guarded)


async def _refused(exc: Exception) -> AsyncIterator[Message]:
    raise exc
    yield  # an async generator that fails on its first step
