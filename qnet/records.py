"""Peer-message records to and from plain dicts, checked against their annotations.

A layer's peer messages are frozen dataclasses whose fields are str, int, float, bytes, or
tuples of those; ``to_plain`` gives the JSON-ready dict a transport carries (and that the Peer API's
proto conversion mirrors), ``from_plain`` rebuilds the record and raises ``ProtocolError``
naming the field when a peer sent something else. Annotations are read as strings (modules
use postponed evaluation) and cached, since this is on every message's path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from enum import Enum
from typing import Any, TypeVar

from qnet.errors import ProtocolError

T = TypeVar("T")

_FIELD_TYPES: dict[type, tuple[tuple[str, str], ...]] = {}


def field_types(cls: type) -> tuple[tuple[str, str], ...]:
    """(name, annotation) of a dataclass's fields."""
    known = _FIELD_TYPES.get(cls)
    if known is None:
        known = _FIELD_TYPES[cls] = tuple((f.name, str(f.type)) for f in fields(cls))
    return known


def to_plain(record: object) -> dict[str, Any]:
    """Enums by value, tuples as lists."""
    out: dict[str, Any] = {}
    for name, _ in field_types(type(record)):
        value = getattr(record, name)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def from_plain(cls: type[T], what: str, data: object) -> T:
    """Build ``cls`` from ``data``; ``what`` names the message in errors."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: expected a record, got {data!r}")
    kwargs: dict[str, Any] = {}
    for name, annotation in field_types(cls):
        if name not in data:
            raise ProtocolError(f"{what} lacks field {name!r}")
        value = data[name]
        ok, value = _convert(annotation, value)
        if not ok:
            raise ProtocolError(f"{what} has a bad {name!r}: {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_bytes(value: object) -> bool:
    return isinstance(value, bytes)


_SCALARS: dict[str, Callable[[object], bool]] = {
    "int": _is_int,
    "float": _is_float,
    "str": _is_str,
    "bytes": _is_bytes,
}


def _convert(annotation: str, value: Any) -> tuple[bool, Any]:
    check = _SCALARS.get(annotation)
    if check is not None:
        ok = check(value)
        return ok, float(value) if ok and annotation == "float" else value
    if annotation.startswith("tuple[") and annotation.endswith(", ...]"):
        check = _SCALARS.get(annotation[6:-6])
        if check is None:
            raise AssertionError(f"no converter for {annotation}")  # a bug here, not the peer's
        if not isinstance(value, list | tuple) or not all(check(v) for v in value):
            return False, value
        if annotation == "tuple[float, ...]":
            return True, tuple(float(v) for v in value)
        return True, tuple(value)
    raise AssertionError(f"no converter for {annotation}")
