"""Mutual TLS for the suite: a network's certificate directory, read as plain files.

The suite imports nothing of qnet's security code; it knows only the directory layout that
``qnet certs`` writes (and ``qnet up`` writes into the run directory when it makes a fresh set):

- ``ca.pem``: the network CA every server and client certificate chains to;
- ``node-NAME.pem`` / ``node-NAME.key``: node NAME's certificate (one per node of the
  topology), ``app.pem`` / ``app.key``: applications and operators, ``channeld.pem`` /
  ``channeld.key``: the channel backend;
- ``app.token``: the application token, sent as ``authorization: Bearer TOKEN``.

Servers present a certificate whose DNS name is ``node.NAME.qnet`` (a node daemon) or
``channeld.qnet`` (the channel backend); a client checks that name rather than the dialed
address, so one node's certificate cannot stand in for another node's server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

CA_CERT = "ca.pem"
APP_TOKEN = "app.token"
APP = "app"
CHANNELD = "channeld"
#: The URI a node's certificate names it by (its subject alternative name).
NODE_URI_PREFIX = "urn:qnet:node:"
CHANNELD_SERVER_NAME = "channeld.qnet"
#: The call metadata key of the application token.
TOKEN_KEY = "authorization"


def node_stem(name: str) -> str:
    """The name (without .pem or .key) of node ``name``'s certificate files."""
    return f"node-{name}"


def node_server_name(name: str) -> str:
    """The DNS name a node daemon's server certificate carries."""
    return f"node.{name}.qnet"


class MissingCredential(Exception):
    """The certificate directory lacks (or cannot give) a file a call needs; the case that
    needs it is unsupported, not failed."""


@dataclass(frozen=True, slots=True)
class ClientCredential:
    """Who the suite is on one channel (``stem``: app, node-NAME) and whom it expects."""

    stem: str
    root: bytes
    key: bytes
    cert: bytes
    #: The DNS name the server's certificate must carry; "" checks the dialed host instead.
    server_name: str
    token: str | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The TLS part; the token goes with each call (``BearerToken``)."""
        return grpc.ssl_channel_credentials(self.root, self.key, self.cert)

    def options(self) -> list[tuple[str, str]]:
        if not self.server_name:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer TOKEN`` to every call of a channel.

    Plain call metadata rather than grpc's ``access_token_call_credentials``: that runs a
    Python plugin from grpc's own threads, and with it ``Channel.close`` after a failed TLS
    handshake (a daemon whose certificate names another node) was seen to deadlock
    (grpcio 1.85), hanging the suite where it should report the refusal."""

    def __init__(self, token: str) -> None:
        self._header = (TOKEN_KEY, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), self._header),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


@dataclass(frozen=True, slots=True)
class CertDir:
    """A network's certificate directory."""

    path: Path

    def check(self) -> str:
        """What keeps this directory from being used at all ("" if nothing)."""
        if not self.path.is_dir():
            return f"the certificate directory {self.path} does not exist"
        if not (self.path / CA_CERT).is_file():
            return f"the certificate directory {self.path} holds no {CA_CERT}"
        return ""

    def _read(self, name: str, what: str) -> bytes:
        path = self.path / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MissingCredential(
                f"{what}: cannot read {path} ({exc.strerror or exc}); `qnet certs TOPOLOGY"
                " --out DIR` makes one per node of the topology"
            ) from None

    def token(self) -> str | None:
        """The application token, or None if the directory has none (the application
        certificate alone is then the credential)."""
        path = self.path / APP_TOKEN
        if not path.exists():
            return None
        token = self._read(APP_TOKEN, "the application token").decode(errors="replace").strip()
        return token or None

    def has(self, stem: str) -> bool:
        return (self.path / f"{stem}.pem").is_file() and (self.path / f"{stem}.key").is_file()

    def client(self, stem: str, server_name: str, *, token: str | None = None) -> ClientCredential:
        what = f"the {stem} credential"
        return ClientCredential(
            stem,
            self._read(CA_CERT, "the network CA"),
            self._read(f"{stem}.key", what),
            self._read(f"{stem}.pem", what),
            server_name,
            token,
        )

    def app(self, server_name: str) -> ClientCredential:
        """The application credential (certificate and token) toward ``server_name``."""
        return self.client(APP, server_name, token=self.token())

    def node_app(self, node: str) -> ClientCredential:
        """The application credential for node daemon ``node``'s Application, NodeAdmin,
        LinkLayer and NetworkLayer services."""
        return self.app(node_server_name(node))

    def as_node(self, name: str, server_name: str) -> ClientCredential:
        """Node ``name``'s own certificate toward ``server_name`` (the spec peer playing
        slot ``name``, or a session of the channel backend registered as ``name``)."""
        return self.client(node_stem(name), server_name)

    def node_server(self, name: str) -> grpc.ServerCredentials:
        """Serve as node ``name``, accepting only clients with a certificate of the CA."""
        what = f"the credential of node {name}"
        key = self._read(f"{node_stem(name)}.key", what)
        cert = self._read(f"{node_stem(name)}.pem", what)
        root = self._read(CA_CERT, "the network CA")
        return grpc.ssl_server_credentials([(key, cert)], root, require_client_auth=True)


def peer_nodes(context: grpc.ServicerContext) -> list[str]:
    """The node names the caller's verified certificate carries (its SAN URIs)."""
    # grpc-stubs call the values bytes; they are lists of bytes, one per SAN URI.
    uris = cast("list[bytes]", context.auth_context().get("peer_uri", []))
    names = []
    for uri in uris:
        text = uri.decode(errors="replace")
        if text.startswith(NODE_URI_PREFIX):
            names.append(text[len(NODE_URI_PREFIX) :])
    return names
