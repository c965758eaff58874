"""qnetd: one quantum network node as a process (a thin driver).

``qnetd --node NAME --topology FILE --channel HOST:PORT`` runs node NAME of the topology: it
registers with qnet-channeld, serves the Peer, NodeAdmin and LinkLayer APIs on one gRPC server
(the topology's host and port for the node by default; port 0 picks a free one), announces
readiness with one line on stdout (``qnetd ready on HOST:PORT pid N``) and, if asked, a JSON
file, and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from qnet.daemon.config import DEFAULT_CHANNEL_TIMEOUT_S, NodeDaemonConfig
from qnet.daemon.node import run_node_daemon
from qnet.errors import QnetError

log = logging.getLogger("qnet.qnetd")


def _parse(argv: list[str] | None) -> tuple[NodeDaemonConfig, Path | None, str]:
    p = argparse.ArgumentParser(prog="qnetd", description=__doc__)
    p.add_argument("--node", required=True, help="name of the node (in the topology) to run")
    p.add_argument("--topology", required=True, type=Path, help="topology file (TOML)")
    p.add_argument("--channel", required=True, help="HOST:PORT of qnet-channeld")
    p.add_argument("--host", help="address to bind (default: the topology's, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default: the topology's; 0: free)")
    p.add_argument(
        "--channel-timeout",
        type=float,
        default=DEFAULT_CHANNEL_TIMEOUT_S,
        help="seconds to wait for qnet-channeld to accept connections (default %(default)s)",
    )
    p.add_argument(
        "--certs",
        type=Path,
        help="the network's credentials (qnet certs): mutual TLS with node-NODE.pem"
        " (default: the topology's [security] certs_dir when its TLS is on)",
    )
    p.add_argument("--ready-file", type=Path, help="write {address, pid, node} here once ready")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    try:
        config = NodeDaemonConfig(
            node=a.node,
            topology=a.topology,
            channel=a.channel,
            host=a.host,
            port=a.port,
            channel_timeout_s=a.channel_timeout,
            certs=a.certs,
        )
    except QnetError as exc:
        p.error(str(exc))
    return config, a.ready_file, a.log_level


def _write_ready_file(path: Path, address: str, node: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"address": address, "pid": os.getpid(), "node": node}))
    tmp.replace(path)


async def _main(config: NodeDaemonConfig, ready_file: Path | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(run_node_daemon, config)
            if ready_file is not None:
                _write_ready_file(ready_file, address, config.node)
            print(f"qnetd ready on {address} pid {os.getpid()}", flush=True)
            async for signum in signals:
                log.info("%s: signal %d: stopping", config.node, signum)
                nursery.cancel_scope.cancel()
                break


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> None:
    config, ready_file, level = _parse(argv)
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        trio.run(_main, config, ready_file)
    except Exception as exc:
        cause = _root_cause(exc)
        if not isinstance(cause, QnetError | OSError):
            raise
        print(f"qnetd {config.node}: {cause}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
