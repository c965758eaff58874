"""What the README shows a new user, run as they would run it against `qnet up` daemons: the
tutorial script (`examples/hello_socket.py`, blocking API), the blocking API by name and by
address, and an application from the command line (`qnet app`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import qnet
from qnet.errors import NotFound
from tests.process.test_circuits_process import CHAIN4, _up
from tests.process.test_qnet_up import ROOT, Network

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def chain4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from _up(CHAIN4, tmp_path_factory)


def _run(
    argv: list[str], network: Network, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QNET_RUN_DIR": str(network.run_dir)}
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_tutorial_script_runs(chain4: Network) -> None:
    done = _run([sys.executable, "examples/hello_socket.py"], chain4)
    assert done.returncode == 0, done.stderr
    assert "bob got b'hello from alice' from ('alice', " in done.stdout
    assert "bob measures the qubit in X: " in done.stdout


def test_blocking_api_by_name_and_by_address(chain4: Network) -> None:
    with qnet.connect("alice", run_dir=str(chain4.run_dir)) as alice:
        assert alice.name == "alice"
        zeros = 0
        for _ in range(40):
            q = alice.qubit()
            q.h()
            zeros += q.measure("X") == 0
        # |+⟩ read in X: only gate and readout errors (1e-4, 1 %) make it 1.
        assert zeros >= 36
    with qnet.connect(chain4.address("bob")) as bob:
        assert bob.name == "bob"
        q = bob.qubit()
        q.x()
        q.free()
    with pytest.raises(NotFound):
        qnet.connect("carol", run_dir=str(chain4.run_dir))


def test_an_application_from_the_command_line(chain4: Network) -> None:
    done = _run(
        [
            sys.executable,
            "-m",
            "qnet",
            "app",
            "chsh",
            "--from",
            "alice",
            "--to",
            "bob",
            "--pairs",
            "400",
            "--run-dir",
            str(chain4.run_dir),
        ],
        chain4,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "S =" in done.stdout


def test_the_readme_main_job_runs(tmp_path: Path) -> None:
    """`qnet demo`: chain4 up as processes, teleportation and QKD across it, down again."""
    env = {**os.environ, "QNET_RUN_DIR": str(tmp_path / "untouched")}
    done = subprocess.run(
        [sys.executable, "-m", "qnet", "demo"],
        cwd=tmp_path,  # as a user would: not from the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "classical bound 2/3: beaten" in done.stdout
    assert "keys agree" in done.stdout
    assert "decrypted and checked" in done.stdout
    assert "qnet down: 5 daemons stopped" in done.stdout
    assert not (tmp_path / "untouched").exists()
