"""Classical datagrams between any two nodes, forwarded hop by hop along the routing tables.

Daemons only talk to their neighbours, so a message for a node further away (the transport
layer's handshake, acknowledgements, teleportation bits) travels as a ``NetDatagram`` that
each node hands to the next hop its routing table names, until it reaches its destination.
Like IP: best effort (the layer above retransmits), a hop limit stops loops while routing
reconverges, and a datagram nobody can route is dropped and counted. ``protocol`` says which
layer above takes it at the destination.

Sans-IO: ``send`` and ``on_message`` queue outputs for ``pop_outputs``; the route lookup is a
function of the routing core's current table, passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from qnet.errors import InvalidArgument, ProtocolError, QnetError
from qnet.records import from_plain, to_plain

#: Hops a datagram may take before it is dropped (longer than any loop-free path here).
DEFAULT_HOP_LIMIT = 64
#: Largest payload, in bytes (far below gRPC's message limit, with room for a batch).
MAX_PAYLOAD = 1 << 20


class DatagramMessage:
    """Marker base of the datagram family on the Peer API."""

    __slots__ = ()
    type_name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, **to_plain(self)}


@dataclass(frozen=True, slots=True)
class NetDatagram(DatagramMessage):
    type_name: ClassVar[str] = "datagram"
    source: str
    destination: str
    #: Hops left; a node that would forward it at 0 drops it.
    hop_limit: int
    #: The layer above that takes it at the destination.
    protocol: int
    payload: bytes


def message_from_dict(data: dict[str, Any]) -> DatagramMessage:
    if not isinstance(data, dict) or data.get("type") != NetDatagram.type_name:
        raise ProtocolError(f"unknown datagram message in {data!r}")
    return from_plain(NetDatagram, "datagram", data)


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``message`` to neighbour ``peer``."""

    peer: str
    message: NetDatagram


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """A datagram for this node."""

    source: str
    protocol: int
    payload: bytes


Output = Forward | DatagramReceived


class DatagramCore:
    def __init__(
        self,
        node: str,
        next_hop: Callable[[str], str],
        *,
        hop_limit: int = DEFAULT_HOP_LIMIT,
    ) -> None:
        """``next_hop(destination)`` names the neighbour towards it, or raises a QnetError
        (NotConverged, Unreachable) when there is none."""
        self.node = node
        self._next_hop = next_hop
        self.hop_limit = hop_limit
        self._out: list[Output] = []
        self.counters = {"sent": 0, "forwarded": 0, "delivered": 0, "dropped": 0}

    def send(self, destination: str, protocol: int, payload: bytes) -> None:
        """Send a datagram; raises the routing error at once if there is no route now."""
        if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
            raise InvalidArgument(f"payload must be bytes of at most {MAX_PAYLOAD}", node=self.node)
        if isinstance(protocol, bool) or not isinstance(protocol, int) or protocol < 0:
            raise InvalidArgument(f"protocol must be an integer ≥ 0, got {protocol!r}")
        message = NetDatagram(self.node, destination, self.hop_limit, protocol, payload)
        if destination == self.node:
            self._out.append(DatagramReceived(self.node, protocol, payload))
            return
        self._out.append(Forward(self._next_hop(destination), message))
        self.counters["sent"] += 1

    def on_message(self, sender: str, message: DatagramMessage) -> None:
        if not isinstance(message, NetDatagram):
            raise ProtocolError(f"{type(message).__name__} is not a datagram")
        if message.destination == self.node:
            self.counters["delivered"] += 1
            self._out.append(DatagramReceived(message.source, message.protocol, message.payload))
            return
        if message.hop_limit <= 1:
            self.counters["dropped"] += 1
            return
        try:
            hop = self._next_hop(message.destination)
        except QnetError:
            self.counters["dropped"] += 1
            return
        if hop == sender and sender != message.destination:
            # Routing is reconverging; sending it straight back would only bounce it.
            self.counters["dropped"] += 1
            return
        self.counters["forwarded"] += 1
        forwarded = NetDatagram(
            message.source,
            message.destination,
            message.hop_limit - 1,
            message.protocol,
            message.payload,
        )
        self._out.append(Forward(hop, forwarded))

    def pop_outputs(self) -> list[Output]:
        out, self._out = self._out, []
        return out
