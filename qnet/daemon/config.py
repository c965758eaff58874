"""A node daemon's settings, and the checks of the addresses it is given."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qnet.errors import InvalidArgument
from qnet.topology.model import check_host, check_port

#: Wall-clock time a peer message and its acknowledgement take between two daemons on one
#: machine, generously: the EGP's first retransmission timeout is this, in physical time.
DEFAULT_RTO_WALL_S = 0.020
#: How long a daemon waits at start for qnet-channeld to accept connections.
DEFAULT_CHANNEL_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class NodeDaemonConfig:
    node: str
    topology: Path
    #: ``host:port`` of qnet-channeld.
    channel: str
    #: None: the topology's host and port for this node (a port of 0 picks a free one).
    host: str | None = None
    port: int | None = None
    channel_timeout_s: float = DEFAULT_CHANNEL_TIMEOUT_S
    rto_wall_s: float = DEFAULT_RTO_WALL_S
    #: The network's credentials (``qnet certs``): mutual TLS with this node's certificate.
    #: None: the topology's [security] certs_dir when its TLS is on, else plaintext.
    certs: Path | None = None

    def __post_init__(self) -> None:
        if self.host is not None:
            check_host(self.host)
        if self.port is not None:
            check_port(self.port)
        split_address(self.channel, what="--channel")
        for name, value in (
            ("channel_timeout_s", self.channel_timeout_s),
            ("rto_wall_s", self.rto_wall_s),
        ):
            if not (math.isfinite(value) and 0 < value <= 3600):
                raise InvalidArgument(f"{name} must be in (0, 3600] seconds, got {value!r}")


def split_address(address: str, *, what: str = "address") -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); InvalidArgument names ``what``."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidArgument(f"{what} must be HOST:PORT with a port in 1..65535, got {address!r}")
    try:
        check_host(host)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    return host, int(port)


def rto_ns(rto_wall_s: float, time_scale: float) -> int:
    """The EGP retransmission timeout in physical ns for a wall-clock round trip allowance."""
    return max(1, round(rto_wall_s * time_scale * 1e9))
