"""What robustness tests throw at a gRPC service, and how they judge the answer.

``messages(descriptor)`` is a hypothesis strategy of well-typed protobuf messages built from a
message descriptor alone (every field kind: numbers at and beyond their useful ranges, NaN and
infinities, unknown enum values, names near the real ones, nested and repeated messages, maps).
``invoke`` sends raw bytes to any method of any service over a plain grpcio channel with
identity serializers, so that bytes that are no message at all reach the server too, and
classifies what came back: a response that parses, a typed error (a status with the
``qnet-error`` trailing metadata), or our own deadline on a call that legitimately waits.
Anything else (an untyped status, a response that does not parse) is a finding.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from qnet.errors import ERROR_TYPE_KEY, ERROR_TYPES

NAMES = ("alice", "r1", "bob", "carol", "", "a|b", "alice\x00", "é" * 40)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    small = st.integers(max(low, -3), min(high, 12))
    edges = st.sampled_from(sorted({low, high, max(low, 0), min(high, 2**31 - 1)}))
    return st.one_of(small, small, edges, st.integers(low, high))


def _scalar(field: Any, strings: Sequence[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        return _integers(*_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.floats(-2, 2), st.floats(), st.sampled_from([0.0, 0.5, 1.0]))
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(strings), st.text(max_size=12))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=48)
    if t == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), st.integers(-2, max(values) + 3))
    raise AssertionError(f"no strategy for field {field.full_name} of type {t}")


def _single(
    field: Any, depth: int, strings: Sequence[str], fixed: dict[str, Any]
) -> st.SearchStrategy[Any]:
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return messages(field.message_type, depth=depth + 1, strings=strings, fixed=fixed)
    return _scalar(field, strings)


def _is_map(field: Any) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    )


def _field(
    field: Any, depth: int, strings: Sequence[str], fixed: dict[str, Any]
) -> st.SearchStrategy[Any]:
    if field.name in fixed:
        return fixed[field.name]  # type: ignore[no-any-return]
    if _is_map(field):
        key, value = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        return st.dictionaries(
            _single(key, depth, strings, fixed), _single(value, depth, strings, fixed), max_size=3
        )
    if field.is_repeated:
        return st.lists(_single(field, depth, strings, fixed), max_size=4)
    return _single(field, depth, strings, fixed)


def messages(
    descriptor: Descriptor,
    *,
    depth: int = 0,
    strings: Sequence[str] = NAMES,
    fixed: dict[str, Any] | None = None,
) -> st.SearchStrategy[Message]:
    """Well-typed messages of ``descriptor``: any subset of its fields set, each to any value
    of its type. ``protocol_version`` is mostly the right one (so requests get past the
    version check), and ``fixed`` replaces the strategy of fields of that name at any depth
    (a live session token, say)."""
    fixed = {"protocol_version": st.sampled_from([1, 1, 1, 1, 0, 2, 2**32 - 1]), **(fixed or {})}
    cls = GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    optional = {f.name: _field(f, depth, strings, fixed) for f in descriptor.fields}
    required = {}
    if depth == 0 and "protocol_version" in optional:
        required["protocol_version"] = optional.pop("protocol_version")
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: _build(cls, kw))


def _build(cls: type[Message], kwargs: dict[str, Any]) -> Message:
    message = cls()
    for name, value in kwargs.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        if _is_map(field):
            target = getattr(message, name)
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            getattr(message, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def garbage() -> st.SearchStrategy[bytes]:
    """Bytes that are mostly not a message: random, truncated varints, wrong wire types,
    lengths past the end, deep nesting, and a few that happen to parse."""
    return st.one_of(
        st.binary(max_size=200),
        st.just(b""),
        st.just(b"\x08"),  # a varint key with no value
        st.just(b"\x0a\xff\xff\xff\xff\x0f"),  # a length far past the end
        st.just(b"\x1a" + b"\x1a\x02" * 50),  # nested lengths that do not add up
        st.just(b"\x0b" * 20),  # start-group tags
        st.binary(min_size=1, max_size=8).map(lambda b: b"\x08\x01" + b),  # version 1, then junk
        st.just(b"\xff" * 64),
    )


# -- sending raw bytes ----------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class Outcome:
    """What one call came to."""

    kind: str  # "ok", "typed", "waiting" (our deadline, on a call that may wait), "bad"
    detail: str = ""
    responses: int = 0


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _typed(error: grpc.RpcError) -> Outcome:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        # Only our own deadline or cancel ends a call this way (the servers raise none).
        return Outcome("waiting", f"{code}: {details}")
    trailing: Any = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    names = [e.value for e in (trailing or ()) if e.key == ERROR_TYPE_KEY]
    if len(names) == 1 and names[0] in ERROR_TYPES and code is not None:
        expected = ERROR_TYPES[names[0]]("x").grpc_code
        if expected == code:
            return Outcome("typed", f"{names[0]}: {details}")
    return Outcome("bad", f"untyped status {code}: {details!r} (metadata {trailing!r})")


def _problem(method: MethodDescriptor, data: bytes) -> str | None:
    """What is wrong with a response: it does not parse, or it carries an untyped error."""
    try:
        response = GetMessageClass(method.output_type).FromString(data)
    except Exception as exc:
        return f"a response does not parse: {exc}"
    error = getattr(response, "error", None)
    if isinstance(error, Message) and response.HasField("error"):
        name = getattr(error, "type", None)
        if name not in ERROR_TYPES:
            return f"an error response of no qnet error type: {response}"
    return None


def invoke(
    channel: grpc.Channel,
    method: MethodDescriptor,
    requests: Sequence[bytes],
    *,
    timeout_s: float,
    max_responses: int = 20,
) -> Outcome:
    """Send ``requests`` (one for a unary or server-streaming method) as raw bytes; read up to
    ``max_responses`` responses within ``timeout_s``. A request stream stays open after its
    last request until the call ends, so the server answers them all before it sees the end."""
    path = _path(method)
    count = 0
    done = threading.Event()

    def held_open() -> Iterator[bytes]:
        yield from requests
        done.wait(timeout_s)

    try:
        if method.client_streaming:
            call: Any = channel.stream_stream(path, _identity, _identity)(
                held_open(), timeout=timeout_s
            )
            # One answer per request, and for the Application's Session one `opened` first.
            max_responses = min(max_responses, len(requests) + 1)
        elif method.server_streaming:
            call = channel.unary_stream(path, _identity, _identity)(requests[0], timeout=timeout_s)
        else:
            data = channel.unary_unary(path, _identity, _identity)(requests[0], timeout=timeout_s)
            problem = _problem(method, data)
            if problem:
                return Outcome("bad", problem)
            return Outcome("ok", responses=1)
        try:
            for data in itertools.islice(call, max_responses):
                count += 1
                problem = _problem(method, data)
                if problem:
                    return Outcome("bad", problem, count)
        finally:
            done.set()
            call.cancel()
        return Outcome("ok", responses=count)
    except grpc.RpcError as error:
        outcome = _typed(error)
        return Outcome(outcome.kind, outcome.detail, count)
    finally:
        done.set()


def methods(service: ServiceDescriptor) -> list[MethodDescriptor]:
    return list(service.methods)


def request_descriptor(method: MethodDescriptor) -> Descriptor:
    return method.input_type
