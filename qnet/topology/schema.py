"""The fields each table of a topology file accepts, and how a TOML value is checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from qnet.errors import InvalidArgument
from qnet.physical.params import LinkParams, NodeParams, Scheme
from qnet.topology.model import (
    check_certs_dir,
    check_dead_interval_ms,
    check_fidelity_threshold,
    check_hello_interval_ms,
    check_host,
    check_max_group_qubits,
    check_network_name,
    check_node_name_value,
    check_port,
    check_retransmit_interval_ms,
    check_seed,
    check_time_scale,
    check_tls_mode,
)


@dataclass(frozen=True, slots=True)
class Field:
    kind: str  # "int", "float", "str" or "scheme": what TOML must hold
    check: Callable[[object], None]


_KINDS = {"int": "int", "float": "float", "Scheme": "scheme", "str": "str"}


def _param_fields(default: Any) -> dict[str, Field]:
    """Every field of a params dataclass, range-checked by the dataclass itself."""

    def checker(name: str) -> Callable[[object], None]:
        def check(value: object) -> None:
            replace(default, **{name: value})

        return check

    def kind(annotation: type | str) -> str:
        # A string while params.py postpones annotations, the type itself otherwise.
        return _KINDS[annotation if isinstance(annotation, str) else annotation.__name__]

    # Derived, not listed, so that a field added to NodeParams/LinkParams is accepted at once;
    # a field of a type TOML cannot express fails here, at import, not in some user's file.
    return {f.name: Field(kind(f.type), checker(f.name)) for f in fields(default)}


NODE_PARAM_FIELDS = _param_fields(NodeParams())
LINK_PARAM_FIELDS = _param_fields(LinkParams())
ENDPOINT_FIELDS = {"host": Field("str", check_host), "port": Field("int", check_port)}
NETWORK_FIELDS = {
    "name": Field("str", check_network_name),
    "seed": Field("int", check_seed),
    "time_scale": Field("float", check_time_scale),
    "max_group_qubits": Field("int", check_max_group_qubits),
}
#: Checked one by one here; the rule across them (dead > hello) when RoutingSpec is built.
ROUTING_FIELDS = {
    "hello_interval_ms": Field("float", check_hello_interval_ms),
    "dead_interval_ms": Field("float", check_dead_interval_ms),
    "retransmit_interval_ms": Field("float", check_retransmit_interval_ms),
    "fidelity_threshold": Field("float", check_fidelity_threshold),
}
SECURITY_FIELDS = {
    "tls": Field("str", check_tls_mode),
    "certs_dir": Field("str", check_certs_dir),
}
NODE_DEFAULT_FIELDS = {**NODE_PARAM_FIELDS, **ENDPOINT_FIELDS}
NODE_FIELDS = {"name": Field("str", check_node_name_value), **NODE_DEFAULT_FIELDS}
LINK_FIELDS = ["between", *LINK_PARAM_FIELDS]
TOP_TABLES = ["network", "defaults", "node", "link", "channel", "routing", "security"]


def describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def accept(name: str, spec: Field, value: object) -> object:
    """Type-check a TOML value and range-check it; return it as the dataclasses want it."""
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{name} must be an integer, got {describe(value)}")
        spec.check(value)
        return value
    if spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{name} must be a number, got {describe(value)}")
        try:
            converted = float(value)
        except OverflowError:
            raise InvalidArgument(f"{name} must be a finite number, got {value}") from None
        spec.check(value)  # the raw value, so that the message quotes what the file says
        return converted
    if spec.kind == "scheme":
        choices = [s.value for s in Scheme]
        if not isinstance(value, str) or value not in choices:
            raise InvalidArgument(
                f"{name} must be one of {', '.join(map(repr, choices))}, got {describe(value)}"
            )
        return Scheme(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {describe(value)}")
    spec.check(value)
    return value
