"""SeQUeNCe side of the qnet.sim side-by-side benchmark: a repeater chain run in SeQUeNCe 1.3.1.

SeQUeNCe 1.3.1 needs Python 3.12 (on 3.11 pip quietly installs 0.8.5), so it lives in a venv of
its own, outside the repo, and runs as a subprocess: this script (Python 3.11, no SeQUeNCe
import) makes the venv if it is missing, calls the reference harness (bench_chain.py and
seqlib.py, kept in shared/peers/sequence and not copied here) once per seed, reads the one JSON
line each run prints and shows medians: pairs delivered end to end, simulated service seconds,
pairs per simulated second, CPU seconds of the simulation loop, pairs per CPU-second, and the
mean delivered fidelity as SeQUeNCe books it and as the stored state actually has it.

    python tests/bench/sequence_side.py --nodes 5 --km 20 --proto sh bk --sim-s 0.1 --seeds 3
    python tests/bench/sequence_side.py --nodes 2 3 5 9 17 --proto sh --sim-s 0.1 --seeds 1

Locations (option, else environment variable, else default):

- harness: --harness, QNET_SEQUENCE_HARNESS, else <repo>/../shared/peers/sequence;
- venv: --venv, QNET_SEQUENCE_VENV, else $XDG_CACHE_HOME/qnet/seq-venv (~/.cache/qnet/seq-venv);
- Python 3.12 used to make the venv: --python, QNET_SEQUENCE_PYTHON, else pyenv's 3.12.1.

See tests/bench/README.md ("SeQUeNCe side-by-side") for the physics the harness sets and the
matching qnet topology.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SEQUENCE_VERSION = "1.3.1"
PYENV_VERSION = "3.12.1"
#: Bound on one harness run; a run that takes longer is killed and reported as an error.
DEFAULT_TIMEOUT_S = 900.0
#: Bound on making the venv (python -m venv plus pip install from the registry).
INSTALL_TIMEOUT_S = 1200.0


class SequenceError(RuntimeError):
    """The SeQUeNCe venv could not be made, or a harness run failed or timed out."""


def default_harness() -> Path:
    env = os.environ.get("QNET_SEQUENCE_HARNESS")
    return Path(env) if env else REPO.parent / "shared" / "peers" / "sequence"


def default_venv() -> Path:
    env = os.environ.get("QNET_SEQUENCE_VENV")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "qnet" / "seq-venv"


def find_python312() -> list[str]:
    """Command that starts a Python 3.12 interpreter (to make the venv with)."""
    env = os.environ.get("QNET_SEQUENCE_PYTHON")
    if env:
        return [env]
    pyenv = shutil.which("pyenv")
    if pyenv:
        done = subprocess.run(
            [pyenv, "prefix", PYENV_VERSION], capture_output=True, text=True, timeout=60
        )
        candidate = Path(done.stdout.strip()) / "bin" / "python3.12"
        if done.returncode == 0 and candidate.exists():
            return [str(candidate)]
    found = shutil.which("python3.12")
    if found:
        return [found]
    raise SequenceError(
        f"no Python 3.12: install it with `pyenv install {PYENV_VERSION}` or set"
        " QNET_SEQUENCE_PYTHON / --python"
    )


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed_version(venv: Path) -> str | None:
    python = _venv_python(venv)
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('sequence'))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(venv: Path, python: Sequence[str] | None = None) -> Path:
    """Make ``venv`` with Python 3.12 and sequence==1.3.1 unless it already has them.

    Returns the venv's interpreter.
    """
    version = _installed_version(venv)
    if version == SEQUENCE_VERSION:
        return _venv_python(venv)
    if version is not None:
        raise SequenceError(
            f"{venv} holds sequence {version}, not {SEQUENCE_VERSION}: remove it or pick another"
            " --venv"
        )
    base = list(python) if python else find_python312()
    print(f"making the SeQUeNCe venv {venv} with {' '.join(base)} ...", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYENV_VERSION=PYENV_VERSION)
    steps = [
        [*base, "-m", "venv", str(venv)],
        [str(_venv_python(venv)), "-m", "pip", "install", "-q", f"sequence=={SEQUENCE_VERSION}"],
    ]
    for step in steps:
        try:
            subprocess.run(step, check=True, env=env, timeout=INSTALL_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise SequenceError(f"making the venv failed at {' '.join(step)}: {exc}") from exc
    version = _installed_version(venv)
    if version != SEQUENCE_VERSION:
        raise SequenceError(f"{venv}: pip gave sequence {version}, not {SEQUENCE_VERSION}")
    return _venv_python(venv)


def run_sequence(
    nodes: int,
    km: float,
    proto: str,
    sim_s: float,
    seed: int,
    *,
    venv: Path,
    harness: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    python: Sequence[str] | None = None,
    target_fid: float | None = None,
) -> dict[str, Any]:
    """One SeQUeNCe chain run (nodes routers, km between neighbours) in its own process.

    ``target_fid`` is the reservation's fidelity (harness default 0.5): pairs whose
    bookkeeping fidelity is below it are neither swapped further nor delivered, and a target
    above the raw link fidelity (0.95) turns purification on.

    Returns the harness's JSON record, plus ``outer_wall_s`` and ``outer_cpu_s``: wall and CPU
    (user + system) seconds of the whole subprocess, SeQUeNCe's import and set-up included.
    """
    if proto not in ("sh", "bk"):
        raise ValueError(f"proto must be 'sh' or 'bk', got {proto!r}")
    interpreter = ensure_venv(venv, python)
    harness = harness or default_harness()
    script = harness / "bench_chain.py"
    if not script.exists():
        raise SequenceError(f"no harness at {script} (set QNET_SEQUENCE_HARNESS or --harness)")
    cmd = [
        str(interpreter),
        str(script),
        f"--nodes={nodes}",
        f"--km={km}",
        f"--proto={proto}",
        f"--sim-s={sim_s}",
        f"--seed={seed}",
    ]
    if target_fid is not None:
        cmd.append(f"--target={target_fid}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=harness, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SequenceError(f"timed out after {timeout_s:g} s: {' '.join(cmd)}") from exc
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SequenceError(f"exit {done.returncode}: {' '.join(cmd)}\n{tail}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SequenceError(f"no JSON line from {' '.join(cmd)}; stdout: {done.stdout[-500:]!r}")
    record: dict[str, Any] = json.loads(lines[-1])
    record["outer_wall_s"] = round(wall, 3)
    record["outer_cpu_s"] = round(
        (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3
    )
    return record


def _median(records: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS: list[tuple[str, str, str]] = [
    # (header, record key, format)
    ("pairs", "pairs", ".0f"),
    ("sim s", "sim_s", ".3g"),
    ("pairs/sim-s", "pairs_per_sim_s", ".1f"),
    ("CPU s", "run_cpu_s", ".3f"),
    ("pairs/CPU-s", "pairs_per_cpu_s", ".1f"),
    ("F book", "mean_fid_bookkeeping", ".4f"),
    ("F state", "mean_fid_physical", ".4f"),
    ("proc CPU s", "outer_cpu_s", ".2f"),
]


def summary_row(records: Sequence[dict[str, Any]]) -> list[str]:
    return [_fmt(_median(records, key), spec) for _, key, spec in COLUMNS]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5], help="routers in the chain")
    parser.add_argument("--km", type=float, default=20.0, help="fibre between neighbour routers")
    parser.add_argument("--proto", nargs="+", choices=["sh", "bk"], default=["sh"])
    parser.add_argument("--sim-s", type=float, default=0.1, help="simulated seconds of service")
    parser.add_argument("--seeds", type=int, default=3, help="runs per case, seeds 0..N-1")
    parser.add_argument("--venv", type=Path, default=default_venv())
    parser.add_argument("--harness", type=Path, default=default_harness())
    parser.add_argument("--python", help="Python 3.12 to make the venv with (default: pyenv's)")
    parser.add_argument(
        "--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="bound on each run"
    )
    parser.add_argument(
        "--target", type=float, help="reservation fidelity target (harness default 0.5)"
    )
    parser.add_argument("--jsonl", type=Path, help="also append every run's record here")
    args = parser.parse_args(argv)

    python = [args.python] if args.python else None
    ensure_venv(args.venv, python)
    header = ["proto", "nodes", *(name for name, _, _ in COLUMNS), "seeds"]
    rows: list[list[str]] = []
    failed = False
    for proto in args.proto:
        for nodes in args.nodes:
            records: list[dict[str, Any]] = []
            for seed in range(args.seeds):
                try:
                    record = run_sequence(
                        nodes,
                        args.km,
                        proto,
                        args.sim_s,
                        seed,
                        venv=args.venv,
                        harness=args.harness,
                        timeout_s=args.timeout_s,
                        python=python,
                        target_fid=args.target,
                    )
                except SequenceError as exc:
                    print(f"{proto} nodes={nodes} seed={seed}: {exc}", file=sys.stderr)
                    failed = True
                    continue
                records.append(record)
                print(
                    f"{proto} nodes={nodes} seed={seed}: {record['pairs']} pairs,"
                    f" {record['run_cpu_s']} CPU-s, F {record['mean_fid_bookkeeping']}"
                    f" / {record['mean_fid_physical']}",
                    file=sys.stderr,
                )
                if args.jsonl:
                    with args.jsonl.open("a") as out:
                        out.write(json.dumps(record) + "\n")
            if records:
                rows.append([proto, str(nodes), *summary_row(records), str(len(records))])
    print(
        f"SeQUeNCe {SEQUENCE_VERSION} chain, {args.km:g} km links, {args.sim_s:g} s simulated,"
        f" target fidelity {0.5 if args.target is None else args.target:g};"
        f" medians over seeds (F book = SeQUeNCe's bookkeeping fidelity, F state = fidelity of"
        f" the stored state; CPU s = simulation loop only, proc CPU s = whole process)"
    )
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for line in [header, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
