"""Where an application finds its node daemon: a node name or a ``host:port``.

A name is looked up in the run directory ``qnet up`` wrote (the ``run_dir`` argument, else
``$QNET_RUN_DIR``, else ``./.qnet-run``). Anything with a port after its last colon is taken as
an address as it stands (``127.0.0.1:7001``, ``[::1]:7001``).

When the network in the run directory uses TLS, its application credential (certificate and
token, ``qnet.security``) comes with the address, so ``qnet.connect("alice")`` just works.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qnet.daemon.rundir import RunDir, default_run_dir
from qnet.errors import InvalidArgument, NotFound, QnetError

if TYPE_CHECKING:
    from qnet.security.tls import ClientTLS


def is_address(target: str) -> bool:
    host, sep, port = target.rpartition(":")
    return bool(sep and host and port.isdigit())


def resolve_address(target: str, run_dir: str | Path | None = None) -> str:
    """The gRPC address of the daemon ``target`` names."""
    return resolve(target, run_dir)[0]


def resolve(target: str, run_dir: str | Path | None = None) -> tuple[str, ClientTLS | None]:
    """The gRPC address of the daemon ``target`` names, and the credential to reach it with
    (None: plaintext; a ``host:port`` gets the run directory's network's, if it has TLS)."""
    if not target:
        raise InvalidArgument("a node name or host:port is needed")
    path = Path(run_dir) if run_dir is not None else default_run_dir()
    if is_address(target):
        return target, _any_tls(path)
    state = RunDir(path).read_state()
    if state is None:
        raise NotFound(
            f"no running network in {path} to find node {target!r} in: start one with"
            " `qnet up TOPOLOGY`, set QNET_RUN_DIR, or give host:port"
        )
    return state.running_node(target).address, state.client_tls(target)


def _any_tls(path: Path) -> ClientTLS | None:
    """The credential of the run directory's network, if it has one that works; plaintext
    otherwise (a ``host:port`` may well be a daemon of no network recorded there)."""
    try:
        state = RunDir(path).read_state()
        return None if state is None else state.client_tls()
    except QnetError:
        return None
