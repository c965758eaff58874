"""`qnet interop` against daemons that use mutual TLS: examples/interop.toml with ``[security]
tls = "on"`` brought up with `qnet up` (which makes the network's certificates in the run
directory, one per node, spec-peer slots included), its two slots freed, then:

- the whole suite from the run directory alone (its state records the certificates): every
  case passes, spec-peer cases (the spec peer speaks TLS as a0-spec and zz-spec), channel
  backend and application cases alike;
- by address with ``--certs``, and a plaintext attempt refused with a hint;
- a certificate directory that lacks a slot's key: the cases that need it are unsupported,
  the others still pass.

As in test_interop_process, the pytest process is the child subreaper while the network runs,
and the teardown stops every recorded PID whatever happens, then checks that no process of
this network is left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.test_interop_process import (
    TOPOLOGY,
    interop,
    network_with_free_slots,
)

pytestmark = pytest.mark.process

TARGETS = ("alice", "r1", "r2", "bob")
#: Bound on a run of a few quick cases, or of a refusal to start.
SHORT_TIMEOUT_S = 30


def _matrix(out: str) -> str:
    return next(
        line for line in out.splitlines() if line.startswith("interop: ") and "cases" not in line
    )


def _leftovers(pattern: Path) -> str:
    found = subprocess.run(
        ["pgrep", "-fa", str(pattern)], capture_output=True, text=True, check=False
    )
    # pgrep also matches itself on some systems: keep only other processes.
    return "\n".join(line for line in found.stdout.splitlines() if "pgrep" not in line)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("qnet-tls")
    topology = base / "interop_tls.toml"
    topology.write_text(TOPOLOGY.read_text() + '\n[security]\ntls = "on"\n')
    with network_with_free_slots(topology, base / "run") as path:
        yield path
    # Every daemon of this network names the base directory in its arguments (its topology
    # or certificates); other networks on the machine do not.
    assert _leftovers(base) == ""


def _certs(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "state.json").read_text())["certs_dir"])


def test_every_case_passes_over_mutual_tls(run_dir: Path, tmp_path: Path) -> None:
    certs = _certs(run_dir)
    assert (certs / "node-a0-spec.key").is_file()
    ids = [line.split()[0] for line in interop("--list").stdout.splitlines()]
    junit = tmp_path / "interop.xml"
    result = interop("--run-dir", run_dir, "--junit", junit)
    out = result.stdout + result.stderr
    assert "spec-peer slots: a0-spec (at alice), zz-spec (at alice)" in out
    assert f"mutual TLS with {certs}" in out
    assert _matrix(out) == "interop: " + " ".join("P" * len(ids)), out
    assert result.returncode == 0, out
    # The TLS-only probes ran: a Hello under another node's certificate, and the channel
    # backend's identity rules.
    assert "zz-spec's Hello over a0-spec's certificate PERMISSION_DENIED" in out
    assert "register as another node: PERMISSION_DENIED" in out


def test_by_address_with_certs_and_refused_without(run_dir: Path) -> None:
    state = json.loads((run_dir / "state.json").read_text())
    addresses = {name: state["nodes"][name]["address"] for name in TARGETS}
    # Labelled (checked against the node's name) and unlabelled (against the host) alike.
    entries = [f"alice={addresses['alice']}", addresses["r1"], addresses["r2"], addresses["bob"]]
    cases = ("peer.hello", "channel.not-owned", "app.sockets")
    picked = [arg for c in cases for arg in ("--case", c)]
    result = interop(*entries, "--certs", _certs(run_dir), *picked, timeout_s=SHORT_TIMEOUT_S)
    out = result.stdout + result.stderr
    assert _matrix(out) == "interop: P P P", out
    assert result.returncode == 0, out
    plain = interop(addresses["alice"], "--case", "peer.hello", timeout_s=SHORT_TIMEOUT_S)
    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert "--certs DIR" in plain.stderr
    # Refused at the handshake (alice's certificate is not bob's), and promptly: closing a
    # channel after a failed handshake must not hang (see qnet.interop.tls.BearerToken).
    mislabelled = interop(
        f"bob={addresses['alice']}", "--certs", _certs(run_dir), *picked, timeout_s=SHORT_TIMEOUT_S
    )
    assert mislabelled.returncode == 2
    assert "checked for node bob" in mislabelled.stderr


def test_a_missing_slot_key_makes_its_cases_unsupported(run_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "certs"
    shutil.copytree(_certs(run_dir), partial)
    (partial / "node-a0-spec.key").unlink()
    cases = ("peer.hello", "link.create-denied", "channel.not-owned")
    picked = [arg for c in cases for arg in ("--case", c)]
    result = interop("--run-dir", run_dir, "--certs", partial, *picked, timeout_s=SHORT_TIMEOUT_S)
    out = result.stdout + result.stderr
    # peer.hello takes the slot whose key is there; the master slot's case cannot run.
    assert _matrix(out) == "interop: P U U", out
    assert result.returncode == 0, out
    assert "node-a0-spec.key" in out
