"""Who is on the other end of an RPC: the identity a network certificate names.

Every certificate the network CA issues names one identity in a URI subject alternative name:
``urn:qnet:node:NAME`` (a node daemon), ``urn:qnet:channeld`` (the channel backend) or
``urn:qnet:app`` (applications and the operator's tools). Servers with TLS on read it from the
peer's verified certificate (``tls.identify``) and keep it, for the handler of the RPC, in a
context variable that only the RPC's own trio task sees (``caller``).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum

from qnet.errors import InvalidArgument, PermissionDenied
from qnet.names import check_node_name

URI_PREFIX = "urn:qnet:"
#: DNS names in the certificates, for TLS host name checks by role (``node.NAME.qnet``).
DNS_SUFFIX = ".qnet"


class Role(Enum):
    NODE = "node"
    CHANNEL = "channeld"
    APP = "app"


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    #: The node's name for ``Role.NODE``, else "".
    name: str = ""

    @classmethod
    def node(cls, name: str) -> Identity:
        check_node_name(name)
        return cls(Role.NODE, name)

    @property
    def uri(self) -> str:
        if self.role is Role.NODE:
            return f"{URI_PREFIX}node:{self.name}"
        return f"{URI_PREFIX}{self.role.value}"

    @property
    def dns_name(self) -> str:
        """The name a client checks the server's certificate against (``node.alice.qnet``)."""
        if self.role is Role.NODE:
            return f"node.{self.name}{DNS_SUFFIX}"
        return f"{self.role.value}{DNS_SUFFIX}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity | None:
        """The identity a SAN URI names, or None if it names none."""
        if not uri.startswith(URI_PREFIX):
            return None
        rest = uri[len(URI_PREFIX) :]
        kind, _, name = rest.partition(":")
        if kind == Role.NODE.value and name:
            try:
                return cls.node(name)
            except InvalidArgument:
                return None
        for role in (Role.CHANNEL, Role.APP):
            if rest == role.value:
                return cls(role)
        return None

    def __str__(self) -> str:
        return f"node {self.name}" if self.role is Role.NODE else self.role.value


CHANNEL = Identity(Role.CHANNEL)
APP = Identity(Role.APP)

_CALLER: ContextVar[Identity | None] = ContextVar("qnet_caller", default=None)


def caller() -> Identity | None:
    """The authenticated identity of the RPC this trio task serves (None with TLS off)."""
    return _CALLER.get()


def set_caller(identity: Identity | None) -> None:
    _CALLER.set(identity)


def require_node(node: str, *, what: str) -> None:
    """Refuse (PermissionDenied) unless the caller is node ``node``; call only where TLS is
    on, where every RPC has an identity."""
    who = _CALLER.get()
    if who is None or who.role is not Role.NODE or who.name != node:
        raise PermissionDenied(f"{who or 'a caller without identity'} may not {what}")
