"""Reading a topology file: TOML, then every check, each failure located by file and line."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from qnet.errors import InvalidArgument
from qnet.names import check_node_name, link_id
from qnet.physical.params import LinkParams, NodeParams
from qnet.topology.lines import KeyLines, KeyPath
from qnet.topology.model import (
    DEFAULT_HOST,
    DEFAULT_MAX_GROUP_QUBITS,
    DEFAULT_NETWORK_NAME,
    NAME,
    EndpointSpec,
    LinkSpec,
    NodeSpec,
    RoutingSpec,
    SecuritySpec,
    Topology,
    TopologyError,
    hint,
    structure_problems,
)
from qnet.topology.schema import (
    ENDPOINT_FIELDS,
    LINK_FIELDS,
    LINK_PARAM_FIELDS,
    NETWORK_FIELDS,
    NODE_DEFAULT_FIELDS,
    NODE_FIELDS,
    NODE_PARAM_FIELDS,
    ROUTING_FIELDS,
    SECURITY_FIELDS,
    TOP_TABLES,
    Field,
    accept,
    describe,
)

_DECODE_AT = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$", re.S
)


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, file: str) -> TopologyError:
    m = _DECODE_AT.match(str(exc))
    if m is None:
        return TopologyError(f"invalid TOML: {exc}", file=file, line=None)
    if m["line"] is not None:
        detail = f"invalid TOML: {m['msg']} (column {m['col']})"
        return TopologyError(detail, file=file, line=int(m["line"]))
    detail = f"invalid TOML: {m['msg']} (at end of file)"
    return TopologyError(detail, file=file, line=max(1, len(text.splitlines())))


class _Parser:
    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.lines = KeyLines(text)

    def fail(self, path: KeyPath, detail: str, field: str | None = None) -> TopologyError:
        return TopologyError(detail, file=self.file, line=self.lines.line(path), field=field)

    def unknown(self, path: KeyPath, key: str, where: str, known: Collection[str]) -> None:
        if key not in known:
            raise self.fail(
                (*path, key), f"unknown field {key!r} in {where}{hint(key, known)}", key
            )

    def table(self, parent: Mapping[str, object], key: str, path: KeyPath) -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            label = "[" + ".".join(map(str, path)) + "]"
            raise self.fail(path, f"{label} must be a table, got {describe(value)}", key)
        return value

    def array(self, doc: Mapping[str, object], key: str) -> list[dict[str, Any]]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail((key,), f"{key} entries must be tables, written [[{key}]]", key)
        return value

    def values(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        where: str,
        context: str,
        known: Mapping[str, Field],
        special: Collection[str] = (),
    ) -> dict[str, object]:
        for key in table:
            self.unknown(path, key, where, [*known, *special])
        out: dict[str, object] = {}
        for key, raw in table.items():
            if key in special:
                continue
            try:
                out[key] = accept(key, known[key], raw)
            except InvalidArgument as e:
                raise self.fail((*path, key), f"{context}: {e.reason}", key) from None
        return out

    def params(
        self,
        default: Any,
        known: Mapping[str, Field],
        merged: Mapping[str, object],
        origin: Mapping[str, KeyPath],
        path: KeyPath,
        context: str,
    ) -> Any:
        """Build a params dataclass; each field was range-checked alone, so what fails here is
        a rule across fields (t2_s ≤ 2·t1_s): blame a field this entry sets, if it sets one."""
        try:
            return replace(default, **{k: v for k, v in merged.items() if k in known})
        except InvalidArgument as e:
            named = [w for w in re.findall(r"[A-Za-z0-9_]+", e.reason) if w in known]
            own = [n for n in named if origin.get(n, ())[: len(path)] == path]
            blamed = (own or named or [None])[0]
            where = origin.get(blamed, path) if blamed else path
            raise self.fail(where, f"{context}: {e.reason}", blamed) from None

    def parse(self, doc: Mapping[str, object], default_name: str, source: Path | None) -> Topology:
        for key, value in doc.items():
            if key not in TOP_TABLES:
                kind = "table" if isinstance(value, dict | list) else "field"
                raise self.fail(
                    (key,), f"unknown {kind} {key!r} at top level{hint(key, TOP_TABLES)}", key
                )
        net = self.values(
            self.table(doc, "network", ("network",)),
            ("network",),
            "[network]",
            "[network]",
            NETWORK_FIELDS,
        )
        chan = self.values(
            self.table(doc, "channel", ("channel",)),
            ("channel",),
            "[channel]",
            "[channel]",
            ENDPOINT_FIELDS,
        )
        routing_path: KeyPath = ("routing",)
        routing_values = self.values(
            self.table(doc, "routing", routing_path),
            routing_path,
            "[routing]",
            "[routing]",
            ROUTING_FIELDS,
        )
        routing = self.params(
            RoutingSpec(),
            ROUTING_FIELDS,
            routing_values,
            {k: (*routing_path, k) for k in routing_values},
            routing_path,
            "[routing]",
        )
        security = self.values(
            self.table(doc, "security", ("security",)),
            ("security",),
            "[security]",
            "[security]",
            SECURITY_FIELDS,
        )
        defaults = self.table(doc, "defaults", ("defaults",))
        for key in defaults:
            self.unknown(("defaults",), key, "[defaults]", ["node", "link"])
        node_defaults = self._defaults(defaults, "node", NODE_DEFAULT_FIELDS)
        link_defaults = self._defaults(defaults, "link", LINK_PARAM_FIELDS)

        nodes: list[NodeSpec] = []
        origins: list[dict[str, KeyPath]] = []
        for k, entry in enumerate(self.array(doc, "node")):
            node, origin = self._node(k, entry, node_defaults)
            nodes.append(node)
            origins.append(origin)
        links = [
            self._link(k, entry, link_defaults) for k, entry in enumerate(self.array(doc, "link"))
        ]
        channel = EndpointSpec(**chan)  # type: ignore[arg-type]  # checked by values()
        for p in structure_problems(tuple(nodes), tuple(links), channel):
            if p.index is None:
                raise self.fail((p.kind,), p.message)
            path: KeyPath = (p.kind, p.index, p.field or "")
            if p.kind == "node" and p.field == "port":
                path = origins[p.index].get("port", (p.kind, p.index))
            raise self.fail(path, p.message, p.field)
        try:
            return Topology(
                name=str(net.get("name", default_name)),
                seed=net.get("seed", 0),  # type: ignore[arg-type]  # checked by values()
                time_scale=net.get("time_scale", 1.0),  # type: ignore[arg-type]
                max_group_qubits=net.get(  # type: ignore[arg-type]
                    "max_group_qubits", DEFAULT_MAX_GROUP_QUBITS
                ),
                nodes=tuple(nodes),
                links=tuple(links),
                channel=channel,
                routing=routing,
                security=SecuritySpec(**security),  # type: ignore[arg-type]  # checked
                source=source,
            )
        except InvalidArgument as e:  # only a check added to Topology but not to the parser
            raise self.fail(("network",), e.reason) from None

    def _defaults(
        self, defaults: Mapping[str, object], key: str, known: Mapping[str, Field]
    ) -> dict[str, tuple[object, KeyPath]]:
        path = ("defaults", key)
        label = f"[defaults.{key}]"
        values = self.values(self.table(defaults, key, path), path, label, label, known)
        return {k: (v, (*path, k)) for k, v in values.items()}

    def _merge(
        self,
        defaults: Mapping[str, tuple[object, KeyPath]],
        own: Mapping[str, object],
        path: KeyPath,
    ) -> tuple[dict[str, object], dict[str, KeyPath]]:
        merged = {k: v for k, (v, _) in defaults.items()}
        origin = {k: p for k, (_, p) in defaults.items()}
        for k, v in own.items():
            merged[k] = v
            origin[k] = (*path, k)
        return merged, origin

    def _node(
        self, k: int, entry: Mapping[str, object], defaults: Mapping[str, tuple[object, KeyPath]]
    ) -> tuple[NodeSpec, dict[str, KeyPath]]:
        path: KeyPath = ("node", k)
        where = f"[[node]] {k + 1}"
        for key in entry:
            self.unknown(path, key, where, NODE_FIELDS)
        if "name" not in entry:
            raise self.fail(path, f"{where}: missing field 'name'", "name")
        name = str(self.values({"name": entry["name"]}, path, where, where, NODE_FIELDS)["name"])
        context = f"node {name}"
        own = self.values(entry, path, where, context, NODE_DEFAULT_FIELDS, special=["name"])
        merged, origin = self._merge(defaults, own, path)
        params = self.params(NodeParams(), NODE_PARAM_FIELDS, merged, origin, path, context)
        host = str(merged.get("host", DEFAULT_HOST))
        port = merged.get("port", 0)
        return NodeSpec(name, params, host, port), origin  # type: ignore[arg-type]

    def _link(
        self, k: int, entry: Mapping[str, object], defaults: Mapping[str, tuple[object, KeyPath]]
    ) -> LinkSpec:
        path: KeyPath = ("link", k)
        where = f"[[link]] {k + 1}"
        for key in entry:
            self.unknown(path, key, where, LINK_FIELDS)
        if "between" not in entry:
            raise self.fail(path, f"{where}: missing field 'between'", "between")
        between = entry["between"]
        at = (*path, "between")
        if (
            not isinstance(between, list)
            or len(between) != 2
            or not all(isinstance(end, str) for end in between)
        ):
            raise self.fail(
                at,
                f"{where}: between must be an array of two node names, got {describe(between)}",
                "between",
            )
        a, b = between
        for end in (a, b):
            try:
                check_node_name(end)
            except InvalidArgument as e:
                raise self.fail(at, f"{where}: between: {e.reason}", "between") from None
        if a == b:
            raise self.fail(at, f"{where}: a link from {a!r} to itself", "between")
        context = f"link {link_id(a, b)}"
        own = self.values(entry, path, where, context, LINK_PARAM_FIELDS, special=["between"])
        merged, origin = self._merge(defaults, own, path)
        params = self.params(LinkParams(), LINK_PARAM_FIELDS, merged, origin, path, context)
        return LinkSpec(a, b, params)


def parse_topology(text: str, source: str | os.PathLike[str] = "<string>") -> Topology:
    """Parse a topology from TOML text. ``source`` names it in error messages; a path (not a
    plain string) is also kept as ``Topology.source`` and its stem is the default name."""
    file = os.fspath(source)
    path = None if isinstance(source, str) else Path(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(e, text, file) from None
    stem = path.stem if path is not None else ""
    default_name = stem if NAME.match(stem) else DEFAULT_NETWORK_NAME
    return _Parser(text, file).parse(doc, default_name, path)


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and parse a topology file; every refusal is a TopologyError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise TopologyError(f"cannot read: {e.strerror or e}", file=str(p), line=None) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TopologyError("not valid UTF-8", file=str(p), line=line) from None
    # Some editors start UTF-8 files with a byte-order mark, which TOML does not allow.
    return parse_topology(text.removeprefix("\ufeff"), p)
