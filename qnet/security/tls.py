"""Credentials on the wire: TLS for servers and channels, and the guards that check callers.

With TLS on, every server requires a client certificate issued by the network CA (grpcio's
servers either require one or never ask for one), and each service then checks who the
certificate names (``qnet.security.identity``):

- ``identify``: any identity of the network; the handler reads it with ``caller()`` (the Peer
  and Channel services check it against the node a Hello or Register names).
- ``app_guard(token)``: the Application and operator services of a node daemon: the
  application certificate, or any network certificate whose calls carry the application
  token (``authorization: Bearer TOKEN`` metadata) the run directory holds.

A client (``ClientTLS``) presents its certificate, checks the server's against the CA and,
where it knows whom it dials, against that identity's name (``node.bob.qnet``) rather than the
address, so a node's certificate cannot stand in for another node's server.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import grpc

from qnet.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from qnet.runtime.grpc_bridge import ChannelOptions, insecure_channel, secure_channel
from qnet.runtime.grpc_service import Guard
from qnet.security.files import APP_TOKEN, CA_CERT, cert_path, key_path
from qnet.security.identity import APP, Identity, Role, caller, set_caller
from qnet.topology import Topology

__all__ = [
    "ClientTLS",
    "Credentials",
    "app_guard",
    "caller",
    "client_channel",
    "daemon_credentials",
    "identify",
    "load_app_client",
    "load_credentials",
    "peer_identity",
    "set_caller",
]

TOKEN_KEY = "authorization"


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """What a client needs to dial a server of the network over mutual TLS."""

    root_pem: bytes
    key_pem: bytes
    cert_pem: bytes
    #: Sent with every call as ``authorization: Bearer TOKEN`` (applications only).
    token: str | None = None
    #: Check the server's certificate against this name instead of the dialed address.
    server_name: str | None = None

    def for_server(self, identity: Identity) -> ClientTLS:
        return replace(self, server_name=identity.dns_name)

    def credentials(self) -> grpc.ChannelCredentials:
        # The token goes as plain call metadata (``client_channel``), not as grpc's
        # ``access_token_call_credentials``: that plugin runs Python on grpc's own threads,
        # and closing a channel after a failed handshake was seen to deadlock with it.
        return grpc.ssl_channel_credentials(self.root_pem, self.key_pem, self.cert_pem)

    def options(self) -> list[tuple[str, int | str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def client_channel(
    address: str,
    tls: ClientTLS | None,
    *,
    max_message_bytes: int | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A channel to ``address``: plaintext when ``tls`` is None, else mutual TLS."""
    if tls is None:
        return insecure_channel(address, max_message_bytes=max_message_bytes, options=options)
    channel = secure_channel(
        address,
        tls.credentials(),
        max_message_bytes=max_message_bytes,
        options=[*tls.options(), *options],
    )
    if tls.token is None:
        return channel
    return grpc.intercept_channel(channel, _BearerToken(tls.token))


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, header: tuple[str, str]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = (*(details.metadata or ()), header)
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """``authorization: Bearer TOKEN`` on every call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = (TOKEN_KEY, f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_CallDetails(details, self._header), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_CallDetails(details, self._header), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_CallDetails(details, self._header), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_CallDetails(details, self._header), requests)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A daemon's own credential: its identity, key and certificate, and the CA it trusts."""

    identity: Identity
    root_pem: bytes
    key_pem: bytes
    cert_pem: bytes
    #: The application token a node daemon accepts (None: application certificates only).
    app_token: str | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], self.root_pem, require_client_auth=True
        )

    def client(self, server: Identity | None = None) -> ClientTLS:
        tls = ClientTLS(self.root_pem, self.key_pem, self.cert_pem)
        return tls if server is None else tls.for_server(server)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read {what} {path}: {exc.strerror or exc}; create the network's"
            " credentials with `qnet certs TOPOLOGY --out DIR`"
        ) from None


def _token(directory: Path, *, required: bool) -> str | None:
    path = directory / APP_TOKEN
    if not required and not path.exists():
        return None
    token = _read(path, "the application token").decode(errors="replace").strip()
    if not token:
        raise FailedPrecondition(f"the application token {path} is empty")
    return token


def load_credentials(directory: Path, identity: Identity) -> Credentials:
    """``identity``'s credential from a certificate directory, checked now: issued by the
    directory's CA, valid today, naming ``identity``. A node daemon also takes the application
    token, if the directory has one."""
    from qnet.security.certs import identity_of_cert, verify_issued  # cryptography: slow

    root = _read(directory / CA_CERT, "the network CA")
    cert = _read(cert_path(directory, identity), f"the certificate of {identity}")
    key = _read(key_path(directory, identity), f"the key of {identity}")
    try:
        verify_issued(root, cert)
    except FailedPrecondition as exc:
        raise FailedPrecondition(f"{cert_path(directory, identity)}: {exc.reason}") from None
    named = identity_of_cert(cert)
    if named != identity:
        raise FailedPrecondition(
            f"{cert_path(directory, identity)} names {named or 'no qnet identity'}, not {identity}"
        )
    token = _token(directory, required=False) if identity.role is Role.NODE else None
    return Credentials(identity, root, key, cert, token)


def daemon_credentials(
    topology: Topology, certs: Path | None, identity: Identity
) -> Credentials | None:
    """A daemon's credential: from ``certs`` when given (TLS then, whatever the topology
    says), else from the topology's [security] certs_dir when its TLS is on; None means
    plaintext. TLS on without credentials is refused, never served in plaintext."""
    directory = certs if certs is not None else topology.certs_path() if topology.tls else None
    if directory is None:
        if topology.tls:
            raise FailedPrecondition(
                f"TLS is on for network {topology.name} ([security] tls ="
                f" {topology.security.tls!r}): give the daemon the network's credentials"
                " (--certs DIR, made by `qnet certs`, or [security] certs_dir)"
            )
        return None
    return load_credentials(directory, identity)


def load_app_client(directory: Path) -> ClientTLS:
    """The application credential of a certificate directory (certificate and token)."""
    creds = load_credentials(directory, APP)
    return ClientTLS(
        creds.root_pem, creds.key_pem, creds.cert_pem, token=_token(directory, required=False)
    )


# -- server side ------------------------------------------------------------------------------


def peer_identity(context: grpc.ServicerContext) -> Identity | None:
    """The identity the caller's verified certificate names, or None."""
    # grpc-stubs call the values bytes; they are lists of bytes, one per SAN URI.
    uris = cast("list[bytes]", context.auth_context().get("peer_uri", []))
    for uri in uris:
        identity = Identity.from_uri(uri.decode(errors="replace"))
        if identity is not None:
            return identity
    return None


def identify(context: grpc.ServicerContext) -> None:
    """Guard: the caller must hold a certificate of the network; ``caller()`` names it."""
    identity = peer_identity(context)
    if identity is None:
        raise Unauthenticated("the caller's certificate names no identity of this network")
    set_caller(identity)


def app_guard(token: str | None) -> Guard:
    """Guard of a node daemon's Application and operator services: the application
    certificate, or a network certificate and the application token."""
    expected = f"Bearer {token}".encode() if token else None

    def guard(context: grpc.ServicerContext) -> None:
        identity = peer_identity(context)
        set_caller(identity)
        if identity is not None and identity.role is Role.APP:
            return
        if expected is not None:
            for key, value in context.invocation_metadata():
                if (
                    key == TOKEN_KEY
                    and isinstance(value, str)
                    and hmac.compare_digest(value.encode(), expected)
                ):
                    return
        raise PermissionDenied(
            f"{identity or 'this caller'} is not an application of this network: use the"
            " application certificate or token of the network's run directory"
        )

    return guard
