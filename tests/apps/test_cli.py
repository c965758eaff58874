"""``qnet app`` on ``--sim``: the figure is printed, and the exit code says whether it worked
(0) or the protocol aborted (1, with the reason on stderr)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qnet.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_chsh_prints_s_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["app", "chsh", "--sim", str(EXAMPLES / "two_nodes.toml"), "--pairs", "300"]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--seed", "1"])
    out = capsys.readouterr().out
    assert done.value.code == 0, out
    assert "CHSH over 300 pairs alice – bob: S = " in out


def test_qkd_abort_exits_non_zero_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    noisy = str(EXAMPLES / "noisy_pair.toml")
    argv = ["app", "qkd", "--sim", noisy, "--pairs", "800", "--sample-fraction", "0.5"]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--min-fidelity", "0.8", "--seed", "3"])
    assert done.value.code == 1
    assert "is above the 11% threshold" in capsys.readouterr().err


def test_bad_state_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["app", "teleport", "--sim", str(EXAMPLES / "two_nodes.toml"), "--state", "up"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 1
    assert "unknown state 'up'" in capsys.readouterr().err
