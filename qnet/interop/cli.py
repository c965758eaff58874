"""The ``qnet interop`` subcommand's arguments (light: nothing heavy is imported until it runs)."""

from __future__ import annotations

import argparse


def add_interop_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "interop",
        help="run the wire-protocol conformance suite against running daemons",
        description="Check daemons through proto/qnet/v1 only: a spec peer speaks the Peer"
        " protocol to them as a neighbour, and cases check the link layer, routing, circuits"
        " and the Application service. Prints one letter per case (P pass, F fail,"
        " U unsupported) and a table; exits 1 if any case failed. See docs/INTEROP.md.",
    )
    parser.add_argument(
        "addresses",
        nargs="*",
        metavar="[NAME=]HOST:PORT",
        help="daemons to check (default: those running from the run directory)",
    )
    parser.add_argument(
        "--run-dir",
        help="run directory of `qnet up` (default: $QNET_RUN_DIR, else .qnet-run)",
    )
    parser.add_argument(
        "--certs",
        metavar="DIR",
        help="the network's certificate directory (`qnet certs`): speak mutual TLS with it"
        " (default: the one the run directory's state records, if any)",
    )
    parser.add_argument(
        "--case", action="append", default=[], metavar="ID", help="run only this case (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--junit", metavar="PATH", help="also write the results as JUnit XML")
    parser.add_argument(
        "--timeout", type=float, help="seconds allowed per case (default: each case's own)"
    )
    parser.add_argument(
        "--allowance",
        type=float,
        default=0.02,
        help="extra tolerance on measured error rates for noise the daemons' estimates leave"
        " out, such as readout error (default 0.02)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from qnet.interop.runner import main

    return main(args)
