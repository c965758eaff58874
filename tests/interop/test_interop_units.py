"""The interop suite's own pieces: statistics, the report (matrix, table, JUnit XML), the
runner's outcomes and the run-directory reader."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qnet.interop import report, stats, targets
from qnet.interop.registry import Case, Context, Failed, Outcome, Result, Unsupported
from qnet.interop.runner import run_case, select


def test_binomial_bound_scales_with_the_sample() -> None:
    small = stats.binomial_bound(2, 40, 0.05)
    large = stats.binomial_bound(20, 400, 0.05)
    assert small.ok
    assert large.ok
    assert large.high - large.low < small.high - small.low
    assert not stats.binomial_bound(20, 40, 0.05).ok  # a wrong Pauli frame shows at once
    # An expected probability of 0 still tolerates a stray event.
    assert stats.binomial_bound(1, 100, 0.0).ok
    assert stats.binomial_bound(3, 100, 0.0, allowance=0.0).high == pytest.approx(0.04)
    with pytest.raises(ValueError, match="no samples"):
        stats.binomial_bound(0, 0, 0.5)


def test_bell_conventions() -> None:
    # Φ+: Z and X agree, Y differs; Ψ+ (x = 1) flips Z and Y; Φ− (z = 1) flips X and Y.
    assert [stats.expected_disagreement(0, b) for b in "ZXY"] == [False, False, True]
    assert [stats.expected_disagreement(1, b) for b in "ZXY"] == [True, False, False]
    assert [stats.expected_disagreement(2, b) for b in "ZXY"] == [False, True, False]
    assert [stats.expected_disagreement(3, b) for b in "ZXY"] == [True, True, True]
    weights = stats.werner_weights(0.91)
    for basis in "ZXY":
        assert stats.error_probability(weights, basis) == pytest.approx(0.06)
    assert stats.fidelity_from_errors({"Z": 0.06, "X": 0.06, "Y": 0.06}) == pytest.approx(0.91)
    assert all(b.ok for b in stats.uniform_bound([50, 48, 52]))
    assert not all(b.ok for b in stats.uniform_bound([150, 0, 0]))


def _case(case_id: str, fn: object, timeout_s: float = 5.0) -> Case:
    return Case(case_id, "spec §1", "a title", fn, timeout_s)  # type: ignore[arg-type]


def _outcomes() -> list[Outcome]:
    return [
        Outcome(_case("a.pass", None), Result.PASS, "fine", 0.5),
        Outcome(_case("b.fail", None), Result.FAIL, "broke <the> & contract", 1.25),
        Outcome(_case("c.unsup", None), Result.UNSUPPORTED, "no slot", 0.0),
    ]


def test_matrix_and_table() -> None:
    outcomes = _outcomes()
    assert report.matrix(outcomes) == "interop: P F U"
    table = report.table(outcomes).splitlines()
    assert table[0].split()[:3] == ["ID", "SPEC", "SECTION"]
    assert table[2].startswith("b.fail")
    assert "FAIL" in table[2]
    assert "spec §1" in table[2]
    assert report.summary(outcomes) == "3 cases: 1 passed, 1 failed, 1 unsupported"


def test_junit_xml() -> None:
    root = ET.fromstring(report.junit_xml(_outcomes()).split("\n", 1)[1])
    assert root.tag == "testsuite"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    assert set(cases) == {"a.pass", "b.fail", "c.unsup"}
    failure = cases["b.fail"].find("failure")
    assert failure is not None
    assert failure.text == "broke <the> & contract"
    assert cases["c.unsup"].find("skipped") is not None
    prop = cases["a.pass"].find("properties/property")
    assert prop is not None
    assert prop.get("value") == "spec §1"


def _targets() -> targets.Targets:
    return targets.Targets({"alice": "127.0.0.1:1"})


def test_runner_outcomes() -> None:
    def passes(ctx: Context) -> str:
        assert ctx.remaining() > 0
        return "ok"

    def fails(ctx: Context) -> str:
        raise Failed("the daemon said no")

    def unsupported(ctx: Context) -> str:
        raise Unsupported("no slot")

    def crashes(ctx: Context) -> str:
        raise KeyError("surprise")

    def slot_needed(ctx: Context) -> str:
        ctx.slot(master=True)
        return "unreachable"

    results = {
        fn.__name__: run_case(_case(fn.__name__, fn), _targets(), None, 0.02)
        for fn in (passes, fails, unsupported, crashes, slot_needed)
    }
    assert results["passes"].result is Result.PASS
    assert results["passes"].detail == "ok"
    assert results["fails"].result is Result.FAIL
    assert results["unsupported"].result is Result.UNSUPPORTED
    assert results["crashes"].result is Result.FAIL
    assert "KeyError" in results["crashes"].detail
    assert results["slot_needed"].result is Result.UNSUPPORTED


def test_runner_bounds_a_case_that_overruns() -> None:
    def runs_out(ctx: Context) -> str:
        while True:
            ctx.remaining()  # raises Failed once the deadline passed

    outcome = run_case(_case("slow", runs_out), _targets(), 0.2, 0.02)
    assert outcome.result is Result.FAIL
    assert "ran out of time" in outcome.detail
    assert outcome.elapsed_s < 5


def test_select_one_case_and_refuse_unknown() -> None:
    cases = [_case("x", None), _case("y", None)]
    assert [c.id for c in select(cases, ["y"])] == ["y"]
    assert select(cases, []) == cases
    with pytest.raises(SystemExit, match="unknown case z"):
        select(cases, ["z"])


def test_run_dir_reader(tmp_path: Path) -> None:
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    state = {
        "version": 1,
        "network": "n",
        "channel": {"address": "127.0.0.1:5", "pid": os.getpid()},
        "nodes": {
            "alice": {"address": "127.0.0.1:6", "pid": os.getpid()},
            "spec": {"address": "127.0.0.1:7", "pid": dead},
        },
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    got = targets.from_run_dir(tmp_path)
    assert got.daemons == {"alice": "127.0.0.1:6"}  # the stopped node leaves its name free
    assert got.channel == "127.0.0.1:5"
    assert got.network == "n"
    with pytest.raises(targets.TargetError, match=r"no state\.json"):
        targets.from_run_dir(tmp_path / "missing")
    (tmp_path / "state.json").write_text('{"version": 9}')
    with pytest.raises(targets.TargetError, match=r"version-1"):
        targets.from_run_dir(tmp_path)


def test_slots_know_their_role() -> None:
    assert targets.Slot("a0-spec", "alice").master
    assert not targets.Slot("zz-spec", "alice").master
    t = targets.Targets({}, slots=[targets.Slot("zz-spec", "alice")])
    assert t.slot(master=True) is None
    assert t.slot() == t.slot(master=False)


def test_the_suite_imports_no_daemon_internals() -> None:
    root = Path(__file__).resolve().parents[2] / "qnet" / "interop"
    allowed = ("qnet.interop", "qnet.v1")
    for path in root.glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from") and words[1].startswith("qnet"):
                assert words[1].startswith(allowed), f"{path.name}: {line.strip()}"
