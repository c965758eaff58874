"""The ``qnet`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from qnet.errors import InvalidArgument, QnetError
from qnet.physical.params import Scheme

if TYPE_CHECKING:
    from qnet.daemon.rundir import NetworkState

T = TypeVar("T")


def _demo(args: argparse.Namespace) -> int:
    if not args.link:
        return _network_demo(args)
    from qnet.demo.physics import format_result, run_demo

    scheme = Scheme(args.scheme)
    print(
        f"starting qnet-channeld (time scale {args.time_scale}); generating {args.pairs} pairs"
        f" between alice and bob over {args.length_km:g} km…",
        flush=True,
    )
    result = trio.run(
        lambda: run_demo(
            length_km=args.length_km,
            scheme=scheme,
            bright_state=args.bright_state,
            pairs=args.pairs,
            time_scale=args.time_scale,
            seed=args.seed,
        )
    )
    print(format_result(result, length_km=args.length_km, scheme=scheme))
    print("qnet-channeld stopped.")
    return 0


def _network_demo(args: argparse.Namespace) -> int:
    from qnet.demo.network import demo_topology, run_network_demo

    def say(line: str) -> None:
        print(line, flush=True)

    topology = demo_topology(args.topology)
    result = _run(
        lambda: run_network_demo(
            topology,
            rounds=args.rounds,
            qkd_pairs=args.qkd_pairs,
            min_fidelity=args.min_fidelity,
            seed=args.seed,
            say=say,
        )
    )
    return 0 if result.ok else 1


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` under trio; an error group of qnet errors becomes one QnetError."""
    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if all(isinstance(e, QnetError | OSError) for e in leaves):
            raise QnetError("; ".join(str(e) for e in leaves)) from group
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _run_dir(args: argparse.Namespace) -> Path:
    from qnet.daemon.rundir import default_run_dir

    return (Path(args.run_dir) if args.run_dir else default_run_dir()).absolute()


def _state(run_dir: Path) -> NetworkState:
    from qnet.daemon.rundir import RunDir

    state = RunDir(run_dir).read_state()
    if state is None:
        raise QnetError(
            f"no network is running from {run_dir} (no state file there);"
            " start one with `qnet up TOPOLOGY`"
        )
    return state


def _up(args: argparse.Namespace) -> int:
    from qnet.daemon.launcher import up
    from qnet.daemon.report import format_up

    topology = Path(args.topology).resolve()
    result = _run(
        lambda: up(
            topology,
            _run_dir(args),
            time_scale=args.time_scale,
            timeout_s=args.timeout,
            log_level=args.log_level,
        )
    )
    print(format_up(result))
    return 0


def _down(args: argparse.Namespace) -> int:
    from qnet.daemon.launcher import down
    from qnet.daemon.report import format_down

    run_dir = _run_dir(args)
    print(format_down(_run(lambda: down(run_dir)), str(run_dir)))
    return 0


def _status(args: argparse.Namespace) -> int:
    from qnet.daemon.report import format_status, gather_status

    state = _state(_run_dir(args))
    rows = _run(lambda: gather_status(state))
    print(format_status(state, rows))
    return 0 if all(r.healthy for r in rows) else 1


def _links(args: argparse.Namespace) -> int:
    from qnet.daemon.report import format_links, gather_links

    state = _state(_run_dir(args))
    rows, failures = _run(lambda: gather_links(state))
    print(format_links(state, rows, failures))
    return 0 if not failures else 1


def _routes(args: argparse.Namespace) -> int:
    from qnet.daemon.report import format_routes, gather_routes

    state = _state(_run_dir(args))
    routes = _run(lambda: gather_routes(state, args.node))
    print(format_routes(state, routes))
    return 0 if routes.converged else 1


def _restart(args: argparse.Namespace) -> int:
    from qnet.daemon.launcher import restart, restart_network
    from qnet.daemon.report import format_restart, format_up

    run_dir = _run_dir(args)
    if args.channel == (args.node is not None):
        raise InvalidArgument("name one node to restart, or give --channel (not both)")
    if args.channel:
        print(format_up(_run(lambda: restart_network(run_dir, timeout_s=args.timeout))))
        return 0
    print(format_restart(_run(lambda: restart(run_dir, args.node, timeout_s=args.timeout))))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from qnet.daemon.launcher import stop_nodes

    run_dir = _run_dir(args)
    stopped = {d.name for d in _run(lambda: stop_nodes(run_dir, args.nodes))}
    for name in dict.fromkeys(args.nodes):
        print(f"{name} stopped" if name in stopped else f"{name} was not running")
    return 0


def _circuit(args: argparse.Namespace) -> int:
    from qnet.daemon.report import format_circuit, run_circuit

    state = _state(_run_dir(args))
    report = _run(
        lambda: run_circuit(
            state,
            args.head,
            args.tail,
            pairs=args.pairs,
            min_fidelity=args.min_fidelity,
            basis=args.basis,
            timeout_s=args.timeout,
        )
    )
    print(format_circuit(report))
    return 0 if report.pairs == args.pairs else 1


def _certs(args: argparse.Namespace) -> int:
    from qnet.security.certs import write_network_certs
    from qnet.topology import load_topology

    out = Path(args.out)
    written = write_network_certs(
        load_topology(args.topology), out, days=args.days, replace=args.force
    )
    print(f"wrote {len(written)} files to {out}: the network CA, channeld, the application")
    print("credential (app.pem/.key, app.token) and one certificate per node; keys are 0600.")
    print("Keep ca.key off the node machines; give each node ca.pem, its node-NAME files and")
    print("app.token, and point the topology's [security] certs_dir (or --certs) at them.")
    return 0


def _add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        help="where the network's state, PIDs and logs are kept"
        " (default: $QNET_RUN_DIR, else .qnet-run in the current directory)",
    )


def _add_network_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up",
        help="start a network of local daemons from a topology file",
        description="Start qnet-channeld and one qnetd per node as local processes, wait"
        " until all are healthy and linked and every routing table is complete, print them,"
        " record addresses, PIDs and logs in the run directory, and return (the daemons keep"
        " running).",
    )
    up.add_argument("topology", help="topology file (TOML)")
    _add_run_dir(up)
    up.add_argument(
        "--time-scale",
        type=float,
        help="physical seconds per wall second (default: the topology's [network] time_scale)",
    )
    up.add_argument(
        "--timeout", type=float, default=30.0, help="seconds allowed to start (default 30)"
    )
    up.add_argument("--log-level", default="INFO", help="daemons' log level (default INFO)")
    up.set_defaults(run=_up)
    down = sub.add_parser("down", help="stop the network of the run directory")
    _add_run_dir(down)
    down.set_defaults(run=_down)
    status = sub.add_parser("status", help="each daemon's health, PID, uptime and memory in use")
    _add_run_dir(status)
    status.set_defaults(run=_status)
    links = sub.add_parser("links", help="per link: pairs, generation rate and fidelity so far")
    _add_run_dir(links)
    links.set_defaults(run=_links)
    routes = sub.add_parser(
        "routes",
        help="a node's routing table: next hop, path, cost and fidelity per destination",
    )
    routes.add_argument("node", help="name of the node")
    _add_run_dir(routes)
    routes.set_defaults(run=_routes)
    restart = sub.add_parser(
        "restart",
        help="stop one node's daemon (if it runs) and start it again; --channel: the backend",
        description="Stop the daemon of NODE if it still runs, start it again with the"
        " command line recorded in the run directory, link it to its neighbours and wait"
        " until routing is complete again on every node. With --channel, start qnet-channeld"
        " again and every node with it (a daemon that loses the backend exits: its qubits"
        " lived there).",
    )
    restart.add_argument("node", nargs="?", help="name of the node")
    restart.add_argument(
        "--channel",
        action="store_true",
        help="start qnet-channeld again, and with it every node (the backend holds every"
        " qubit, so each node starts afresh)",
    )
    _add_run_dir(restart)
    restart.add_argument("--timeout", type=float, default=30.0, help="seconds allowed (default 30)")
    restart.set_defaults(run=_restart)
    stop = sub.add_parser(
        "stop",
        help="stop some nodes' daemons and leave the rest running",
        description="Stop the daemons of the named nodes (SIGTERM, then SIGKILL after a grace"
        " period); their neighbours notice and routing goes round them. `qnet restart NODE`"
        " starts one again; `qnet down` stops everything.",
    )
    stop.add_argument("nodes", nargs="+", metavar="NODE", help="names of the nodes")
    _add_run_dir(stop)
    stop.set_defaults(run=_stop)
    circuit = sub.add_parser(
        "circuit",
        help="open a circuit between two nodes and measure its pairs at both ends",
        description="Open a circuit from HEAD to TAIL (routing picks the path) for --pairs"
        " end-to-end pairs, have both daemons measure each half in --basis as it is"
        " delivered, and print the pairs delivered, the rate, the mean estimated fidelity"
        " and the measured correlation next to the predicted one.",
    )
    circuit.add_argument("head", help="the node that opens the circuit")
    circuit.add_argument("tail", help="the node at the far end")
    circuit.add_argument("--pairs", type=int, default=100, help="pairs wanted (default 100)")
    circuit.add_argument(
        "--min-fidelity", type=float, default=0.7, help="end-to-end fidelity (default 0.7)"
    )
    circuit.add_argument("--basis", choices=["Z", "X", "Y"], default="Z")
    circuit.add_argument(
        "--timeout", type=float, default=60.0, help="seconds allowed for the pairs (default 60)"
    )
    _add_run_dir(circuit)
    circuit.set_defaults(run=_circuit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qnet", description="qnet: a quantum internet stack")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="bring up chain4 as processes, teleport and distribute a key across it, stop it",
        description="Start examples/chain4.toml as local processes (qnet up, in a run directory"
        " of its own), teleport states from alice to bob with tomography, run BBM92 QKD and"
        " send an AES-GCM encrypted file, print the figures, and bring the network down."
        " With --link: heralded pairs over one fibre link through qnet-channeld alone.",
    )
    demo.add_argument("--topology", type=Path, help="network to run (default: chain4)")
    demo.add_argument("--rounds", type=int, default=24, help="teleports per state (4 states)")
    demo.add_argument("--qkd-pairs", type=int, default=3000, help="pairs measured for QKD")
    demo.add_argument(
        "--min-fidelity", type=float, default=0.9, help="end-to-end pair fidelity target"
    )
    demo.add_argument(
        "--link",
        action="store_true",
        help="the single-link physics demo instead (options below)",
    )
    demo.add_argument("--length-km", type=float, default=10.0)
    demo.add_argument("--scheme", choices=[s.value for s in Scheme], default="single_click")
    demo.add_argument("--bright-state", type=float, default=0.1, help="single-click α")
    demo.add_argument("--pairs", type=int, default=1500)
    demo.add_argument(
        "--time-scale",
        type=float,
        default=0.05,
        help="physical seconds per wall second: below 1 so the client keeps every memory armed",
    )
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(run=_demo)
    _add_network_commands(sub)
    certs = sub.add_parser(
        "certs",
        help="create a network CA and the certificates of every daemon of a topology",
        description="Create a certificate authority for the network of TOPOLOGY and issue"
        " (ECDSA P-256) a certificate for qnet-channeld, each node and the applications, plus"
        " an application token, in --out. Daemons then use mutual TLS with them (--certs, or"
        " [security] certs_dir).",
    )
    certs.add_argument("topology", help="topology file (TOML)")
    certs.add_argument("--out", required=True, help="directory to write (made mode 0700)")
    certs.add_argument(
        "--days", type=int, default=365, help="validity of every certificate (default 365)"
    )
    certs.add_argument(
        "--force", action="store_true", help="replace the CA a directory already holds"
    )
    certs.set_defaults(run=_certs)
    from qnet.apps.cli import add_app_command, run_app

    add_app_command(sub)
    sub.choices["app"].set_defaults(run=run_app)
    from qnet.interop.cli import add_interop_command

    add_interop_command(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except (QnetError, OSError) as exc:
        print(f"qnet: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
