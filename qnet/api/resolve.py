"""Where an application finds its node daemon: a node name or a ``host:port``.

A name is looked up in the run directory ``qnet up`` wrote (the ``run_dir`` argument, else
``$QNET_RUN_DIR``, else ``./.qnet-run``). Anything with a port after its last colon is taken as
an address as it stands (``127.0.0.1:7001``, ``[::1]:7001``).
"""

from __future__ import annotations

from pathlib import Path

from qnet.daemon.rundir import RunDir, default_run_dir
from qnet.errors import InvalidArgument, NotFound


def is_address(target: str) -> bool:
    host, sep, port = target.rpartition(":")
    return bool(sep and host and port.isdigit())


def resolve_address(target: str, run_dir: str | Path | None = None) -> str:
    """The gRPC address of the daemon ``target`` names."""
    if not target:
        raise InvalidArgument("a node name or host:port is needed")
    if is_address(target):
        return target
    path = Path(run_dir) if run_dir is not None else default_run_dir()
    state = RunDir(path).read_state()
    if state is None:
        raise NotFound(
            f"no running network in {path} to find node {target!r} in: start one with"
            " `qnet up TOPOLOGY`, set QNET_RUN_DIR, or give host:port"
        )
    return state.running_node(target).address
