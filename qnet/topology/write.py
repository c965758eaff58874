"""Writing a topology back to TOML, so that parse_topology(topology_to_toml(t)) == t."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from qnet.physical.params import LinkParams, NodeParams, Scheme
from qnet.topology.model import (
    DEFAULT_MAX_GROUP_QUBITS,
    EndpointSpec,
    NodeSpec,
    RoutingSpec,
    SecuritySpec,
    Topology,
)


def _toml_str(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, Scheme):
        return _toml_str(value.value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, bool):
        raise TypeError(f"no TOML form for a boolean field: {value!r}")
    if isinstance(value, int | float):
        return repr(value)  # Python's repr of a finite float is valid TOML
    raise TypeError(f"no TOML form for {value!r}")


def _as_dict(value: Any) -> dict[str, object]:
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _node_dict(node: NodeSpec) -> dict[str, object]:
    return {**_as_dict(node.params), **_as_dict(node.endpoint)}


def _factor(
    entries: list[dict[str, object]], library: dict[str, object]
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Split entries into the values they all share (for [defaults.*]) and what each sets."""
    common = {
        k: v
        for k, v in (entries[0].items() if len(entries) > 1 else ())
        if v != library[k] and all(e[k] == v for e in entries)
    }
    base = {**library, **common}
    return common, [{k: v for k, v in e.items() if v != base[k]} for e in entries]


def _assignments(values: Mapping[str, object]) -> list[str]:
    return [f"{k} = {_toml_value(v)}" for k, v in values.items()]


def topology_to_toml(top: Topology) -> str:
    """A TOML text that parses back to an equal topology. Fields at their defaults are left
    out and values every node (or link) shares go to [defaults.*], so that the text shows what
    is particular about this network."""
    lines = ["[network]", f"name = {_toml_str(top.name)}", f"seed = {top.seed}"]
    if top.time_scale != 1.0:
        lines.append(f"time_scale = {_toml_value(top.time_scale)}")
    if top.max_group_qubits != DEFAULT_MAX_GROUP_QUBITS:
        lines.append(f"max_group_qubits = {top.max_group_qubits}")
    channel = {k: v for k, v in _as_dict(top.channel).items() if v != _as_dict(EndpointSpec())[k]}
    if channel:
        lines += ["", "[channel]", *_assignments(channel)]
    library_routing = _as_dict(RoutingSpec())
    routing = {k: v for k, v in _as_dict(top.routing).items() if v != library_routing[k]}
    if routing:
        lines += ["", "[routing]", *_assignments(routing)]
    security = {k: v for k, v in _as_dict(top.security).items() if v != _as_dict(SecuritySpec())[k]}
    if security:
        lines += ["", "[security]", *_assignments(security)]
    library_node = {**_as_dict(NodeParams()), **_as_dict(EndpointSpec())}
    node_common, node_own = _factor([_node_dict(n) for n in top.nodes], library_node)
    link_common, link_own = _factor(
        [_as_dict(link.params) for link in top.links], _as_dict(LinkParams())
    )
    if node_common:
        lines += ["", "[defaults.node]", *_assignments(node_common)]
    if link_common:
        lines += ["", "[defaults.link]", *_assignments(link_common)]
    for node, own in zip(top.nodes, node_own, strict=True):
        lines += ["", "[[node]]", f"name = {_toml_str(node.name)}", *_assignments(own)]
    for link, own in zip(top.links, link_own, strict=True):
        between = f"between = [{_toml_str(link.a)}, {_toml_str(link.b)}]"
        lines += ["", "[[link]]", between, *_assignments(own)]
    return "\n".join(lines) + "\n"
