"""Cases and their outcomes: every case has an id, the spec section it checks and a function.

A case function takes a ``Context`` and returns a short detail line when the daemons conform.
It raises ``Failed`` (the daemons broke the contract) or ``Unsupported`` (the targets cannot
run this case, e.g. no spec-peer slot); any other exception is reported as a failure with its
text. Every call a case makes is bounded by ``Context.remaining()``.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from qnet.interop.targets import Slot, Targets
from qnet.interop.tls import CHANNELD_SERVER_NAME, ClientCredential, node_stem
from qnet.interop.wire import VERSION, open_channel
from qnet.v1 import channel_pb2_grpc as cgrpc
from qnet.v1 import node_pb2 as npb
from qnet.v1 import node_pb2_grpc as ngrpc


class Result(enum.Enum):
    PASS = "P"
    FAIL = "F"
    UNSUPPORTED = "U"


class Failed(Exception):
    """The daemon's answer breaks the contract."""


class Unsupported(Exception):
    """The targets cannot run this case."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    section: str
    title: str
    run: Callable[[Context], str]
    #: Seconds the case may take by default (the runner's --timeout caps or replaces it).
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    result: Result
    detail: str
    elapsed_s: float


_CASES: dict[str, Case] = {}


def case(
    case_id: str, section: str, title: str, *, timeout_s: float = 30.0
) -> Callable[[Callable[[Context], str]], Callable[[Context], str]]:
    """Register a case function under ``case_id``."""

    def register(fn: Callable[[Context], str]) -> Callable[[Context], str]:
        if case_id in _CASES:
            raise ValueError(f"case {case_id!r} registered twice")
        _CASES[case_id] = Case(case_id, section, title, fn, timeout_s)
        return fn

    return register


def all_cases() -> list[Case]:
    """Every case, in registration order (importing the case modules registers them)."""
    from qnet.interop import (  # noqa: F401
        cases_app,
        cases_link,
        cases_network,
        cases_peer,
        cases_routing,
    )

    return list(_CASES.values())


@dataclass
class Context:
    """What a case works with: the targets, its deadline and cached gRPC channels."""

    targets: Targets
    deadline: float
    #: Extra tolerance on measured error rates for noise a daemon's estimate does not cover.
    allowance: float = 0.02
    #: (address, who the suite is there and whom it expects) -> channel.
    _channels: dict[tuple[str, str], grpc.Channel] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def remaining(self, cap: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Failed("the case ran out of time")
        return left if cap is None else min(left, cap)

    def address(self, node: str) -> str:
        try:
            return self.targets.daemons[node]
        except KeyError:
            raise Unsupported(f"no daemon of node {node!r} among the targets") from None

    def channel(self, address: str, tls: ClientCredential | None = None) -> grpc.Channel:
        who = "" if tls is None else f"{tls.stem}>{tls.server_name}"
        return self._cached(address, who, lambda: tls)

    def _cached(
        self, address: str, who: str, tls: Callable[[], ClientCredential | None]
    ) -> grpc.Channel:
        # Credentials are read (``tls()``) only when the channel is first opened: cases
        # call the daemons in polling loops.
        with self._lock:
            key = (address, who)
            if key not in self._channels:
                self._channels[key] = open_channel(address, tls())
            return self._channels[key]

    def daemon(self, node: str) -> grpc.Channel:
        """A channel to node ``node``'s daemon, as an application of the network."""
        certs = self.targets.certs
        if certs is None:
            return self._cached(self.address(node), "", lambda: None)
        return self._cached(self.address(node), "app", lambda: certs.node_app(node))

    def admin(self, node: str) -> ngrpc.NodeAdminStub:
        return ngrpc.NodeAdminStub(self.daemon(node))

    def link(self, node: str) -> ngrpc.LinkLayerStub:
        return ngrpc.LinkLayerStub(self.daemon(node))

    def network(self, node: str) -> ngrpc.NetworkLayerStub:
        return ngrpc.NetworkLayerStub(self.daemon(node))

    def app(self, node: str) -> ngrpc.ApplicationStub:
        return ngrpc.ApplicationStub(self.daemon(node))

    def backend(self, as_node: str | None = None) -> cgrpc.ChannelStub:
        """The channel backend; over TLS as node ``as_node`` (it lets a node register and
        use a session only as itself), else as an application."""
        if not self.targets.channel:
            raise Unsupported("the channel backend's address is unknown")
        certs = self.targets.certs
        if certs is None:
            return cgrpc.ChannelStub(self._cached(self.targets.channel, "", lambda: None))
        who = "app" if as_node is None else f"node:{as_node}"
        channel = self._cached(
            self.targets.channel,
            who,
            lambda: (
                certs.app(CHANNELD_SERVER_NAME)
                if as_node is None
                else certs.as_node(as_node, CHANNELD_SERVER_NAME)
            ),
        )
        return cgrpc.ChannelStub(channel)

    def slots(self) -> list[Slot]:
        """The spec-peer slots, over TLS those whose node credential the certificate
        directory holds first (the others report the missing file when taken)."""
        certs = self.targets.certs
        if certs is None:
            return list(self.targets.slots)
        return sorted(self.targets.slots, key=lambda s: not certs.has(node_stem(s.name)))

    def slot(self, *, master: bool | None = None) -> Slot:
        slot = next((s for s in self.slots() if master is None or s.master == master), None)
        if slot is None:
            role = {None: "", True: " that is its link's master", False: " that is a slave"}
            raise Unsupported(
                f"no spec-peer slot{role[master]} (a declared neighbour no daemon serves)"
            )
        return slot

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def link_pair(ctx: Context) -> tuple[str, str]:
    """Two target daemons joined by a link (master first), for the link-layer cases."""
    for name in sorted(ctx.targets.daemons):
        status = ctx.admin(name).Status(
            npb.StatusRequest(protocol_version=VERSION), timeout=ctx.remaining(10)
        )
        for neighbour in status.neighbours:
            if neighbour.peer in ctx.targets.daemons and neighbour.connected:
                a, b = sorted((name, neighbour.peer))
                return a, b
    raise Unsupported("no two target daemons share a link")
