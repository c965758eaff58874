"""qnet-channeld: the simulated quantum channel backend as a process (a thin driver).

It serves the Channel API on HOST:PORT (127.0.0.1 and a free port by default), announces
readiness with one line on stdout and, if asked, a JSON file (address, pid), and stops cleanly
on SIGINT or SIGTERM.
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

from qnet.channel.service import ChannelDaemonConfig, run_channel_daemon
from qnet.errors import QnetError


def _parse(argv: list[str] | None) -> tuple[ChannelDaemonConfig, Path | None, str]:
    p = argparse.ArgumentParser(prog="qnet-channeld", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the physics")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="physical seconds per wall-clock second (default 1.0)",
    )
    p.add_argument("--max-group-qubits", type=int, default=10)
    p.add_argument(
        "--test-oracle",
        action="store_true",
        help="serve the test-only oracle of true pair fidelities",
    )
    p.add_argument(
        "--certs",
        type=Path,
        help="the network's credentials (qnet certs): serve mutual TLS with channeld.pem",
    )
    p.add_argument("--ready-file", type=Path, help="write {address, pid} here once serving")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    if not 0 <= a.port <= 65535:
        p.error(f"--port must be in 0..65535, got {a.port}")
    if not a.time_scale > 0:
        p.error(f"--time-scale must be positive, got {a.time_scale}")
    config = ChannelDaemonConfig(
        host=a.host,
        port=a.port,
        seed=a.seed,
        time_scale=a.time_scale,
        max_group_qubits=a.max_group_qubits,
        test_oracle=a.test_oracle,
        certs=a.certs,
    )
    return config, a.ready_file, a.log_level


async def _main(config: ChannelDaemonConfig, ready_file: Path | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port, _ = await nursery.start(run_channel_daemon, config)
            address = f"{config.host}:{port}"
            if ready_file is not None:
                tmp = ready_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({"address": address, "pid": os.getpid()}))
                tmp.replace(ready_file)
            print(f"qnet-channeld ready on {address} pid {os.getpid()}", flush=True)
            async for signum in signals:
                logging.getLogger("qnet.channeld").info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> None:
    config, ready_file, level = _parse(argv)
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        trio.run(_main, config, ready_file)
    except Exception as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # type: ignore[assignment]  # the single error inside
        if not isinstance(exc, OSError | QnetError):
            raise
        print(f"qnet-channeld: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
