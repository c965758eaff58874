"""Typed errors shared by every layer, the daemons and the application API.

Each error names the node that raised it (when known) and maps to one gRPC status code, so a
remote error crosses the wire as (status code, message, type name) and comes back as the same
Python type. Cores raise these without importing grpc; only the mapping looks grpc up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import grpc

#: Trailing-metadata key that carries the error type name across gRPC.
ERROR_TYPE_KEY = "qnet-error"


class QnetError(Exception):
    """Base of all qnet errors. ``node`` is the node that raised it, when known."""

    status: ClassVar[str] = "UNKNOWN"

    def __init__(self, reason: str, *, node: str | None = None) -> None:
        self.reason = reason
        self.node = node
        super().__init__(f"{node}: {reason}" if node else reason)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        import grpc

        code: grpc.StatusCode = grpc.StatusCode[self.status]
        return code


class InvalidArgument(QnetError):
    """A request or message field is malformed: a NaN angle, an unknown basis, a bad range."""

    status = "INVALID_ARGUMENT"


class NotFound(QnetError):
    """An unknown qubit, node, link or session."""

    status = "NOT_FOUND"


class PermissionDenied(QnetError):
    """The caller acted on something it does not own, such as another node's qubit."""

    status = "PERMISSION_DENIED"


class Unauthenticated(QnetError):
    """The request carries no valid session."""

    status = "UNAUTHENTICATED"


class NoMemory(QnetError):
    """A node has no free memory qubit for the request."""

    status = "RESOURCE_EXHAUSTED"


class GroupTooLarge(QnetError):
    """An operation would entangle more qubits in one state than the backend allows."""

    status = "RESOURCE_EXHAUSTED"


class AlreadyExists(QnetError):
    """A node or resource of that name is already there."""

    status = "ALREADY_EXISTS"


class FailedPrecondition(QnetError):
    """The request is valid but not in the current state (an armed qubit, mismatched link)."""

    status = "FAILED_PRECONDITION"


class VersionMismatch(QnetError):
    """The peer speaks a protocol version this implementation does not."""

    status = "FAILED_PRECONDITION"


class Unsupported(QnetError):
    """The request can never be met (e.g. a fidelity above what the link can reach)."""

    status = "UNIMPLEMENTED"


class Timeout(QnetError):
    """The request did not complete in its allowed time."""

    status = "DEADLINE_EXCEEDED"


class Unreachable(QnetError):
    """The node, daemon or destination cannot be reached."""

    status = "UNAVAILABLE"


class NotConverged(Unreachable):
    """Routing has not converged yet, so the absence of a route means nothing.

    A subclass of ``Unreachable`` (gRPC UNAVAILABLE): the condition is transient and the same
    call succeeds later without anything being fixed, which is what UNAVAILABLE means (where
    FAILED_PRECONDITION asks the caller to change the system's state first). Code that treats
    "no route now" generically catches ``Unreachable``; code that waits for start-up catches
    this. ``not_before_ns`` is the earliest time the node can converge.
    """

    def __init__(self, reason: str, *, node: str | None = None, not_before_ns: int = 0) -> None:
        super().__init__(reason, node=node)
        self.not_before_ns = not_before_ns


class ProtocolError(QnetError):
    """A peer broke the protocol (an illegal message for the current state)."""

    status = "INTERNAL"


ERROR_TYPES: dict[str, type[QnetError]] = {
    cls.__name__: cls
    for cls in (
        QnetError,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        NoMemory,
        GroupTooLarge,
        AlreadyExists,
        FailedPrecondition,
        VersionMismatch,
        Unsupported,
        Timeout,
        Unreachable,
        NotConverged,
        ProtocolError,
    )
}


def error_from_wire(type_name: str | None, message: str, *, node: str | None = None) -> QnetError:
    """Rebuild the typed error a remote side raised, from its type name and message."""
    cls = ERROR_TYPES.get(type_name or "", QnetError)
    return cls(message, node=node)
