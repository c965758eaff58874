"""The topology dataclasses, their range checks, and the error a refused topology raises."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qnet.errors import InvalidArgument, NotFound
from qnet.names import check_node_name, link_id
from qnet.physical.params import LinkParams, NodeParams

DEFAULT_HOST = "127.0.0.1"
DEFAULT_NETWORK_NAME = "qnet"
#: The channel core's own default.
DEFAULT_MAX_GROUP_QUBITS = 10
#: A density matrix of n qubits takes 16·4ⁿ bytes: 14 qubits is already 4 GiB.
MAX_GROUP_QUBITS_LIMIT = 14
#: Seeds must fit the signed 64-bit integers of TOML and protobuf.
MAX_SEED = 2**63 - 1
MAX_TIME_SCALE = 1e9
#: Longest routing hello or retransmission interval (ms), and longest dead interval.
MAX_ROUTING_INTERVAL_MS = 60_000.0
MAX_DEAD_INTERVAL_MS = 600_000.0

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# Loose on purpose (names, IPv4, IPv6 all pass); it only stops what could never be an address.
HOST = re.compile(r"^[^\s\x00-\x1f\x7f]{1,253}$")


class TopologyError(InvalidArgument):
    """A topology was refused. ``file`` and ``line`` (1-based; None when the whole file is at
    fault) locate it, ``field`` names the offending field when there is one."""

    def __init__(
        self, detail: str, *, file: str, line: int | None, field: str | None = None
    ) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.detail = detail
        super().__init__(f"{file}:{line}: {detail}" if line is not None else f"{file}: {detail}")


# -- field checks (each raises InvalidArgument naming the field) ------------------------------


def int_in(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def check_network_name(value: object) -> None:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidArgument(
            f"name must be 1-64 characters of letters, digits, '_', '.', '-', got {value!r}"
        )


def check_seed(value: object) -> None:
    int_in("seed", value, 0, MAX_SEED)


def check_time_scale(value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIME_SCALE
    ):
        raise InvalidArgument(f"time_scale must be in (0, {MAX_TIME_SCALE}], got {value!r}")


def check_max_group_qubits(value: object) -> None:
    int_in("max_group_qubits", value, 2, MAX_GROUP_QUBITS_LIMIT)


def check_host(value: object) -> None:
    if not isinstance(value, str) or not HOST.match(value):
        raise InvalidArgument(f"host must be a host name or IP address, got {value!r}")


def check_port(value: object) -> None:
    int_in("port", value, 0, 65535)


def check_node_name_value(value: object) -> None:
    check_node_name(value)  # type: ignore[arg-type]  # it checks the type itself


def _ms_in(name: str, value: object, hi: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= hi
    ):
        raise InvalidArgument(f"{name} must be in (0, {hi:g}] ms, got {value!r}")


def check_hello_interval_ms(value: object) -> None:
    _ms_in("hello_interval_ms", value, MAX_ROUTING_INTERVAL_MS)


def check_dead_interval_ms(value: object) -> None:
    _ms_in("dead_interval_ms", value, MAX_DEAD_INTERVAL_MS)


def check_retransmit_interval_ms(value: object) -> None:
    _ms_in("retransmit_interval_ms", value, MAX_ROUTING_INTERVAL_MS)


def check_fidelity_threshold(value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.0 <= value <= 1.0
    ):
        raise InvalidArgument(f"fidelity_threshold must be in [0, 1], got {value!r}")


TLS_MODES = ("auto", "on", "off")


def check_tls_mode(value: object) -> None:
    if value not in TLS_MODES:
        raise InvalidArgument(
            f"tls must be one of {', '.join(map(repr, TLS_MODES))}, got {value!r}"
        )


def check_certs_dir(value: object) -> None:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InvalidArgument(f"certs_dir must be a directory path, got {value!r}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the topology -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """A daemon's gRPC address; port 0 means a free port picked at start-up."""

    host: str = DEFAULT_HOST
    port: int = 0

    def __post_init__(self) -> None:
        check_host(self.host)
        check_port(self.port)


@dataclass(frozen=True, slots=True)
class RoutingSpec:
    """Link-state routing settings, the ``[routing]`` table; every node uses the same.

    The intervals are about messages between daemons and how fast a silent neighbour is
    declared dead, so they are milliseconds of the daemons' wall clock (virtual time in
    ``qnet.sim``); a daemon converts them to physical time with the backend's time scale.
    """

    hello_interval_ms: float = 200.0
    #: A neighbour silent this long is down; must exceed the hello interval. Ten hello
    #: intervals: a daemon that dies is noticed at once through its broken streams, so this
    #: only bounds silent failures, and a 2-core machine running 50 connections stalls a
    #: daemon for up to a second.
    dead_interval_ms: float = 2000.0
    #: Unacknowledged adverts and database requests are resent this often.
    retransmit_interval_ms: float = 100.0
    #: Links are costed at the rate reaching this fidelity; links below it are not used.
    fidelity_threshold: float = 0.8

    def __post_init__(self) -> None:
        check_hello_interval_ms(self.hello_interval_ms)
        check_dead_interval_ms(self.dead_interval_ms)
        check_retransmit_interval_ms(self.retransmit_interval_ms)
        check_fidelity_threshold(self.fidelity_threshold)
        if self.dead_interval_ms <= self.hello_interval_ms:
            raise InvalidArgument(
                f"dead_interval_ms ({self.dead_interval_ms:g}) must exceed hello_interval_ms"
                f" ({self.hello_interval_ms:g})"
            )


@dataclass(frozen=True, slots=True)
class SecuritySpec:
    """The ``[security]`` table. ``tls``: "on" (mutual TLS everywhere), "off" (plaintext), or
    "auto" (on when any daemon's address is off loopback). ``certs_dir``: the network's
    credentials (``qnet certs``), relative to the topology file; "" lets ``qnet up`` make
    them in the run directory."""

    tls: str = "auto"
    certs_dir: str = ""

    def __post_init__(self) -> None:
        check_tls_mode(self.tls)
        if self.certs_dir:
            check_certs_dir(self.certs_dir)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    params: NodeParams = field(default_factory=NodeParams)
    host: str = DEFAULT_HOST
    port: int = 0

    def __post_init__(self) -> None:
        check_node_name(self.name)
        check_host(self.host)
        check_port(self.port)
        if not isinstance(self.params, NodeParams):
            raise InvalidArgument(f"node {self.name}: params must be NodeParams")

    @property
    def endpoint(self) -> EndpointSpec:
        return EndpointSpec(self.host, self.port)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link between nodes ``a`` and ``b``, in the order the file gives them."""

    a: str
    b: str
    params: LinkParams = field(default_factory=LinkParams)

    def __post_init__(self) -> None:
        check_node_name(self.a)
        check_node_name(self.b)
        if self.a == self.b:
            raise InvalidArgument(f"a link from {self.a!r} to itself")
        if not isinstance(self.params, LinkParams):
            raise InvalidArgument(f"link {self.id}: params must be LinkParams")

    @property
    def id(self) -> str:
        return link_id(self.a, self.b)

    def other(self, name: str) -> str:
        """The far end, seen from ``name``."""
        if name == self.a:
            return self.b
        if name == self.b:
            return self.a
        raise NotFound(f"node {name!r} is not an end of link {self.id}")


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # "node", "link" or "channel"
    index: int | None
    field: str | None
    message: str


def structure_problems(
    nodes: tuple[NodeSpec, ...], links: tuple[LinkSpec, ...], channel: EndpointSpec
) -> Iterator[Problem]:
    """What is wrong across entries; shared by the parser (which adds lines) and Topology."""
    if not nodes:
        yield Problem("node", None, None, "no nodes: a topology needs at least one [[node]]")
    names: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in names:
            yield Problem("node", i, "name", f"duplicate node name {node.name!r}")
        names.add(node.name)
    seen_links: set[str] = set()
    for i, link in enumerate(links):
        for end in (link.a, link.b):
            if end not in names:
                yield Problem(
                    "link", i, "between", f"link {link.id}: unknown node {end!r}{hint(end, names)}"
                )
        if link.id in seen_links:
            yield Problem("link", i, "between", f"duplicate link {link.id}")
        seen_links.add(link.id)
    taken: dict[tuple[str, int], str] = {}
    if channel.port:
        taken[channel.host, channel.port] = "the channel"
    for i, node in enumerate(nodes):
        if not node.port:
            continue
        owner = taken.setdefault((node.host, node.port), f"node {node.name}")
        if owner != f"node {node.name}":
            yield Problem(
                "node",
                i,
                "port",
                f"node {node.name}: port {node.port} on {node.host} is already used by {owner}",
            )


def hint(word: str, choices: Collection[str]) -> str:
    """The typo suffix of an error message: "; did you mean 'length_km'?", or nothing."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole network. ``source`` (the file it came from) takes no part in equality."""

    name: str
    seed: int = 0
    time_scale: float = 1.0
    max_group_qubits: int = DEFAULT_MAX_GROUP_QUBITS
    nodes: tuple[NodeSpec, ...] = ()
    links: tuple[LinkSpec, ...] = ()
    channel: EndpointSpec = field(default_factory=EndpointSpec)
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    security: SecuritySpec = field(default_factory=SecuritySpec)
    source: Path | None = field(default=None, compare=False)
    _nodes_by_name: dict[str, NodeSpec] = field(init=False, repr=False, compare=False)
    _links_by_node: dict[str, tuple[LinkSpec, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Lists would make equal topologies compare unequal; tuples also keep it immutable.
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "links", tuple(self.links))
        check_network_name(self.name)
        check_seed(self.seed)
        check_time_scale(self.time_scale)
        check_max_group_qubits(self.max_group_qubits)
        if not isinstance(self.routing, RoutingSpec):
            raise InvalidArgument("routing must be a RoutingSpec")
        if not isinstance(self.security, SecuritySpec):
            raise InvalidArgument("security must be a SecuritySpec")
        for problem in structure_problems(self.nodes, self.links, self.channel):
            raise InvalidArgument(problem.message)
        by_node: dict[str, list[LinkSpec]] = {n.name: [] for n in self.nodes}
        for link in self.links:
            by_node[link.a].append(link)
            by_node[link.b].append(link)
        object.__setattr__(self, "_nodes_by_name", {n.name: n for n in self.nodes})
        object.__setattr__(self, "_links_by_node", {k: tuple(v) for k, v in by_node.items()})

    @property
    def tls(self) -> bool:
        """Whether the daemons use mutual TLS ([security] tls, "auto" resolved)."""
        if self.security.tls == "auto":
            hosts = [self.channel.host, *(n.host for n in self.nodes)]
            return not all(is_loopback(h) for h in hosts)
        return self.security.tls == "on"

    def certs_path(self) -> Path | None:
        """[security] certs_dir, relative to the topology file; None if not given."""
        if not self.security.certs_dir:
            return None
        path = Path(self.security.certs_dir).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def node(self, name: str) -> NodeSpec:
        try:
            return self._nodes_by_name[name]
        except KeyError:
            raise NotFound(f"no node {name!r} in topology {self.name}") from None

    def links_of(self, name: str) -> tuple[LinkSpec, ...]:
        """The links at ``name``, in file order."""
        self.node(name)
        return self._links_by_node[name]

    def neighbours(self, name: str) -> tuple[str, ...]:
        return tuple(link.other(name) for link in self.links_of(name))

    def components(self) -> list[list[str]]:
        """The connected parts of the graph, each in node order, the first node's part first.
        One part means every node can reach every other."""
        parts: list[list[str]] = []
        seen: set[str] = set()
        for start in self.node_names:
            if start in seen:
                continue
            part, todo = {start}, [start]
            while todo:
                for peer in self.neighbours(todo.pop()):
                    if peer not in part:
                        part.add(peer)
                        todo.append(peer)
            seen |= part
            parts.append([n for n in self.node_names if n in part])
        return parts

    def link(self, a: str, b: str) -> LinkSpec:
        wanted = link_id(a, b)
        for link in self.links_of(a):
            if link.id == wanted:
                return link
        raise NotFound(f"no link {wanted} in topology {self.name}")
