"""Generate the Python code for the qnet wire contracts.

Reads every ``proto/qnet/v1/*.proto`` and writes the package ``qnet/v1/``: per proto file the
messages (``*_pb2.py``), the gRPC stubs and servicers (``*_pb2_grpc.py``) and typed stubs for
both (``.pyi``, from mypy-protobuf), plus ``__init__.py``. The output is deterministic, and
``qnet/v1/`` holds nothing else: files there that the protos no longer produce are removed.

Usage, from anywhere::

    python scripts/gen_proto.py            # regenerate qnet/v1
    python scripts/gen_proto.py --check    # exit 1 if qnet/v1 is stale, naming the files

The tool versions are the exact pins of the ``test`` extra in pyproject.toml (grpcio-tools and
mypy-protobuf); other versions would produce different bytes, so the script refuses them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = Path("proto")
PACKAGE = Path("qnet", "v1")
PINNED_TOOLS = ("grpcio-tools", "mypy-protobuf")
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")

INIT_TEXT = '''\
"""Generated code for the qnet.v1 wire contracts (proto/qnet/v1/*.proto).

Do not edit: regenerate with ``python scripts/gen_proto.py``.
"""
'''


class GenerationError(Exception):
    """The code could not be generated (missing tool, wrong version, protoc error)."""


@dataclass(frozen=True)
class CheckResult:
    """How the committed ``qnet/v1`` differs from freshly generated code (paths relative to it)."""

    stale: tuple[str, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not (self.stale or self.missing or self.extra)

    def describe(self) -> str:
        if self.ok:
            return f"{PACKAGE.as_posix()} is up to date"
        lines = [f"{PACKAGE.as_posix()} is stale; run: python scripts/gen_proto.py"]
        groups = (("stale", self.stale), ("missing", self.missing), ("extra", self.extra))
        for label, names in groups:
            lines.extend(f"  {label}: {PACKAGE.as_posix()}/{name}" for name in names)
        return "\n".join(lines)


def _pinned_versions(root: Path) -> dict[str, str]:
    """The exact ``name==version`` pins of PINNED_TOOLS in the test extra of pyproject.toml."""
    with (root / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    pins: dict[str, str] = {}
    for requirement in project["optional-dependencies"]["test"]:
        name, sep, version = str(requirement).partition("==")
        if sep and name.strip() in PINNED_TOOLS:
            pins[name.strip()] = version.strip()
    return pins


def _check_tool_versions(root: Path) -> None:
    pins = _pinned_versions(root)
    for tool in PINNED_TOOLS:
        if tool not in pins:
            raise GenerationError(f"pyproject.toml: the test extra must pin {tool}==VERSION")
        try:
            installed = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != pins[tool]:
            raise GenerationError(
                f"{tool} {pins[tool]} is required (pinned in pyproject.toml), found {installed}; "
                "run: pip install -e '.[test]'"
            )


def _plugin_path(name: str) -> Path:
    """A protoc plugin installed beside this interpreter (the venv's bin/), or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        raise GenerationError(f"protoc plugin {name} not found; run: pip install -e '.[test]'")
    return Path(found)


def proto_files(root: Path = REPO_ROOT) -> list[Path]:
    """The proto files, relative to ``root``, in a fixed order."""
    files = sorted((root / PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not files:
        raise GenerationError(f"no .proto files in {root / PROTO_ROOT / PACKAGE}")
    return [f.relative_to(root) for f in files]


def generate(out_root: Path, root: Path = REPO_ROOT) -> None:
    """Write the generated package to ``out_root / qnet / v1`` (which must not exist yet)."""
    _check_tool_versions(root)
    out_dir = out_root / PACKAGE
    out_dir.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        *(f"--plugin={name}={_plugin_path(name)}" for name in PLUGINS),
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(f.as_posix() for f in proto_files(root)),
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GenerationError(f"protoc failed ({done.returncode}):\n{done.stderr.strip()}")
    (out_dir / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")


def _files(directory: Path) -> dict[str, bytes]:
    """The files directly in ``directory`` by name (caches and subdirectories ignored)."""
    if not directory.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _compare(fresh: dict[str, bytes], committed: dict[str, bytes]) -> CheckResult:
    return CheckResult(
        stale=tuple(n for n in sorted(fresh) if n in committed and committed[n] != fresh[n]),
        missing=tuple(n for n in sorted(fresh) if n not in committed),
        extra=tuple(n for n in sorted(committed) if n not in fresh),
    )


def _fresh_files(root: Path) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="qnet-gen-proto-") as tmp:
        generate(Path(tmp), root)
        return _files(Path(tmp) / PACKAGE)


def check(root: Path = REPO_ROOT) -> CheckResult:
    """Regenerate into a temporary directory and compare with ``root / qnet / v1``."""
    return _compare(_fresh_files(root), _files(root / PACKAGE))


def regenerate(root: Path = REPO_ROOT) -> CheckResult:
    """Bring ``root / qnet / v1`` up to date; returns what was changed."""
    fresh = _fresh_files(root)
    target = root / PACKAGE
    changes = _compare(fresh, _files(target))
    target.mkdir(parents=True, exist_ok=True)
    for name in (*changes.stale, *changes.missing):
        (target / name).write_bytes(fresh[name])
    for name in changes.extra:
        (target / name).unlink()
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the generated code is stale, missing or extra",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            result = check()
            print(result.describe())
            return 0 if result.ok else 1
        changes = regenerate()
    except GenerationError as e:
        print(f"gen_proto: {e}", file=sys.stderr)
        return 2
    if changes.ok:
        print(f"{PACKAGE.as_posix()} is up to date")
    for label, names in (("wrote", (*changes.stale, *changes.missing)), ("removed", changes.extra)):
        for name in names:
            print(f"{label} {PACKAGE.as_posix()}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
