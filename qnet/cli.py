"""The ``qnet`` command line."""

from __future__ import annotations

import argparse
import sys

import trio

from qnet.errors import QnetError
from qnet.physical.params import Scheme


def _demo(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qnet", description="qnet: a quantum internet stack")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="heralded pairs over a fibre link through a real qnet-channeld process",
        description="Start qnet-channeld, generate and measure heralded pairs over one link,"
        " print measured rate and fidelity next to theory, stop it.",
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except QnetError as exc:
        print(f"qnet: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
