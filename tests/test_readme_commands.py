"""README.md opens with the two set-up commands, and CI runs the tests with the second one."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_AND_DEMO = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/qnet demo"
INSTALL_AND_TEST = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
)


def _readme_opening_commands() -> list[str]:
    """The lines of the first code block of README.md, which must come right after the title
    and one paragraph."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    blocks = [i for i, line in enumerate(lines) if line.startswith("```")]
    assert len(blocks) >= 2, "README.md has no code block"
    start, end = blocks[0], blocks[1]
    prose = [line for line in lines[:start] if line.strip()]
    opening = "README.md must open with the title and one sentence, then the set-up commands"
    assert len(prose) == 2, opening
    assert prose[0].startswith("# "), opening
    return [line for line in lines[start + 1 : end] if line.strip()]


def test_readme_starts_with_the_two_setup_commands() -> None:
    assert _readme_opening_commands() == [INSTALL_AND_DEMO, INSTALL_AND_TEST]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line for line in ci_lines if not line.lstrip().startswith("#")]
    assert any(INSTALL_AND_TEST in line for line in commands), (
        f".ci/run must run: {INSTALL_AND_TEST}"
    )
