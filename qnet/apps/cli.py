"""``qnet app NAME``: run an application against a running network or in-process.

    qnet app teleport --from alice --to bob --state + --state 0     # daemons of `qnet up`
    qnet app qkd --sim examples/two_nodes.toml --pairs 4000         # qnet.sim, virtual clock

Against daemons, node names resolve through the run directory ``qnet up`` wrote
(``--run-dir``, else ``$QNET_RUN_DIR``, else ``./.qnet-run``); with ``--sim TOPOLOGY`` the
whole network runs in this process on a virtual clock. Each command prints its result and the
figure that shows it worked; the exit code is 0 only if that figure clears its classical bound
(1 if it does not, or on an error or abort).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from qnet.errors import InvalidArgument, QnetError

Run = Callable[[argparse.Namespace, list[Any]], Awaitable[tuple[str, bool]]]


def add_app_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``app`` subcommand with one subcommand per application."""
    app = sub.add_parser(
        "app",
        help="run an application: teleport, chsh, qkd, ghz, cnot, grover",
        description="Run a quantum network application between nodes of a running network"
        " (or --sim TOPOLOGY in-process) and print its result and figure of merit.",
    )
    apps = app.add_subparsers(dest="app", required=True, metavar="NAME")
    _teleport_parser(apps)
    _chsh_parser(apps)
    _qkd_parser(apps)
    _ghz_parser(apps)
    _cnot_parser(apps)
    _grover_parser(apps)


def _common(parser: argparse.ArgumentParser, *, pair: bool = True, fidelity: float = 0.9) -> None:
    if pair:
        parser.add_argument("--from", dest="source", default="alice", help="first node (alice)")
        parser.add_argument("--to", dest="dest", default="bob", help="second node (bob)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--sim", metavar="TOPOLOGY", help="run the network in this process from a topology file"
    )
    where.add_argument(
        "--run-dir",
        help="run directory of `qnet up` (default: $QNET_RUN_DIR, else .qnet-run)",
    )
    parser.add_argument("--seed", type=int, help="seed of the random choices (and of --sim)")
    parser.add_argument(
        "--min-fidelity",
        type=float,
        default=fidelity,
        help=f"end-to-end pair fidelity asked of the connection (default {fidelity})",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds each network call may take (60)"
    )


def _teleport_parser(apps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = apps.add_parser(
        "teleport",
        help="teleport states and measure their fidelity by tomography",
        description="Teleport states from --from to --to; the receiver measures each in X, Y"
        " or Z and the sender reconstructs the Bloch vector and fidelity. States: 0 1 + - +i"
        " -i or 'theta,phi' (radians), repeatable; 'random' (default) draws Haar-random states.",
    )
    _common(p)
    p.add_argument(
        "--state",
        action="append",
        help="state to send, repeatable (default random); write --state=-i for states that"
        " start with '-'",
    )
    p.add_argument("--rounds", type=int, default=300, help="shots per state (or random states)")

    async def run(args: argparse.Namespace, nodes: list[Any]) -> tuple[str, bool]:
        from qnet.apps.bloch import parse_state
        from qnet.apps.teleport import teleport

        specs = args.state or ["random"]
        states = None if specs == ["random"] else [parse_state(s) for s in specs]
        result = await teleport(
            nodes[0], nodes[1], states=states, rounds=args.rounds, seed=args.seed,
            min_fidelity=args.min_fidelity, timeout_s=args.timeout,
        )  # fmt: skip
        return result.summary(), result.beats_classical

    p.set_defaults(run_app=run, node_names=_pair_names)


def _chsh_parser(apps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = apps.add_parser("chsh", help="CHSH Bell test over a connection's pairs")
    _common(p)
    p.add_argument("--pairs", type=int, default=1000, help="pairs measured (1000)")

    async def run(args: argparse.Namespace, nodes: list[Any]) -> tuple[str, bool]:
        from qnet.apps.chsh import chsh

        result = await chsh(
            nodes[0], nodes[1], pairs=args.pairs, seed=args.seed,
            min_fidelity=args.min_fidelity, timeout_s=args.timeout,
        )  # fmt: skip
        return result.summary(), result.violates

    p.set_defaults(run_app=run, node_names=_pair_names)


def _qkd_parser(apps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = apps.add_parser(
        "qkd",
        help="BBM92/BB84 key distribution, then an AES-GCM encrypted file",
        description="Distil a key between --from (Alice) and --to (Bob): measure-directly"
        " pairs in random bases, sifting, QBER on a random sample (abort above the threshold),"
        " Cascade, privacy amplification by Toeplitz hashing, every message authenticated"
        " with HMAC under a pre-shared key; then send --file encrypted with AES-GCM.",
    )
    _common(p, fidelity=0.95)
    p.add_argument("--protocol", choices=["bbm92", "bb84"], default="bbm92")
    p.add_argument("--pairs", type=int, default=4000, help="pairs measured (4000)")
    p.add_argument("--sample-fraction", type=float, default=0.2, help="sifted bits sampled (0.2)")
    p.add_argument("--qber-threshold", type=float, default=0.11, help="abort above (0.11)")
    p.add_argument("--file", help="file to send encrypted (default: a short greeting)")
    p.add_argument(
        "--psk-file", help="pre-shared authentication key, raw bytes (default: random per run)"
    )

    async def run(args: argparse.Namespace, nodes: list[Any]) -> tuple[str, bool]:
        from qnet.apps.qkd import QkdOptions, qkd

        options = QkdOptions(
            protocol=args.protocol, pairs=args.pairs, sample_fraction=args.sample_fraction,
            qber_threshold=args.qber_threshold,
        )  # fmt: skip
        psk = await trio.Path(args.psk_file).read_bytes() if args.psk_file else None
        name, data = "message.txt", None
        if args.file:
            name, data = Path(args.file).name, await trio.Path(args.file).read_bytes()
        result = await qkd(
            nodes[0], nodes[1], options=options, psk=psk, file_name=name, file_data=data,
            seed=args.seed, min_fidelity=args.min_fidelity, timeout_s=args.timeout,
        )  # fmt: skip
        return result.summary(), result.keys_agree

    p.set_defaults(run_app=run, node_names=_pair_names)


def _ghz_parser(apps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = apps.add_parser(
        "ghz",
        help="a GHZ state over a centre and its leaves, verified by a fidelity witness",
    )
    p.add_argument("--centre", default="hub", help="node holding a pair with every leaf (hub)")
    p.add_argument("--leaves", nargs="+", default=["alice", "bob"], help="two or more nodes")
    p.add_argument("--rounds", type=int, default=400, help="GHZ states made and measured (400)")
    _common(p, pair=False)

    async def run(args: argparse.Namespace, nodes: list[Any]) -> tuple[str, bool]:
        from qnet.apps.ghz import ghz

        result = await ghz(
            nodes[0], nodes[1:], rounds=args.rounds, min_fidelity=args.min_fidelity,
            timeout_s=args.timeout,
        )  # fmt: skip
        return result.summary(), result.genuinely_entangled

    p.set_defaults(run_app=run, node_names=lambda a: [a.centre, *a.leaves])


def _cnot_parser(apps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = apps.add_parser(
        "cnot", help="distributed CNOT (control on --from, target on --to) from one EPR pair"
    )
    _common(p)
    p.add_argument("--rounds", type=int, default=50, help="runs per truth-table input (50)")
    p.add_argument("--bell-rounds", type=int, default=150, help="Bell-state runs (150)")

    async def run(args: argparse.Namespace, nodes: list[Any]) -> tuple[str, bool]:
        from qnet.apps.cnot import distributed_cnot

        result = await distributed_cnot(
            nodes[0], nodes[1], rounds=args.rounds, bell_rounds=args.bell_rounds,
            min_fidelity=args.min_fidelity, timeout_s=args.timeout,
        )  # fmt: skip
        return result.summary(), result.bell_fidelity.interval()[0] > 0.5

    p.set_defaults(run_app=run, node_names=_pair_names)


def _grover_parser(apps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = apps.add_parser(
        "grover", help="two-qubit Grover search with the qubits on two nodes (distributed CZ)"
    )
    _common(p)
    p.add_argument("--runs", type=int, default=100, help="runs per marked item (100)")

    async def run(args: argparse.Namespace, nodes: list[Any]) -> tuple[str, bool]:
        from qnet.apps.grover import GUESS, grover

        result = await grover(
            nodes[0], nodes[1], runs=args.runs, min_fidelity=args.min_fidelity,
            timeout_s=args.timeout,
        )  # fmt: skip
        return result.summary(), result.overall.interval()[0] > GUESS

    p.set_defaults(run_app=run, node_names=_pair_names)


def _pair_names(args: argparse.Namespace) -> list[str]:
    return [args.source, args.dest]


@asynccontextmanager
async def _open_nodes(args: argparse.Namespace, names: Sequence[str]) -> AsyncGenerator[list[Any]]:
    async with AsyncExitStack() as stack:
        if args.sim:
            from qnet.sim import open_network
            from qnet.topology import load_topology

            net = await stack.enter_async_context(
                open_network(load_topology(Path(args.sim)), seed=args.seed)
            )
            yield [await stack.enter_async_context(net.open_node(n)) for n in names]
        else:
            from qnet.api.aio import open_node

            yield [
                await stack.enter_async_context(open_node(n, run_dir=args.run_dir)) for n in names
            ]


def run_app(args: argparse.Namespace) -> int:
    """Entry point of ``qnet app``: returns the exit code."""
    names: list[str] = args.node_names(args)
    if len(set(names)) != len(names):
        raise InvalidArgument(f"the application needs distinct nodes, got {' '.join(names)}")
    report: list[tuple[str, bool]] = []

    async def main() -> None:
        async with _open_nodes(args, names) as nodes:
            report.append(await args.run_app(args, nodes))

    try:
        if args.sim:
            from qnet.sim import run

            run(main)
        else:
            trio.run(main)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if all(isinstance(e, QnetError) for e in leaves):
            raise leaves[0] from group
        raise
    text, worked = report[0]
    print(text)
    return 0 if worked else 1


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def main(argv: list[str] | None = None) -> None:
    """``python -m qnet.apps.cli NAME …`` (the same as ``qnet app NAME …``)."""
    parser = argparse.ArgumentParser(prog="qnet app")
    sub = parser.add_subparsers(dest="command", required=True)
    add_app_command(sub)
    args = parser.parse_args(["app", *(argv if argv is not None else sys.argv[1:])])
    try:
        code = run_app(args)
    except (QnetError, OSError) as exc:
        print(f"qnet: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
