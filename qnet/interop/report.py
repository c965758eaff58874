"""The suite's output: a result matrix (one letter per case), a table, and JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from qnet.interop.registry import Outcome, Result

_WORDS = {Result.PASS: "pass", Result.FAIL: "FAIL", Result.UNSUPPORTED: "unsupported"}


def matrix(outcomes: Sequence[Outcome]) -> str:
    """``interop: P P F U …``, one letter per case in run order."""
    return "interop: " + " ".join(o.result.value for o in outcomes)


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("ID", "SPEC SECTION", "RESULT", "TIME", "DETAIL")]
    for o in outcomes:
        rows.append((o.case.id, o.case.section, _WORDS[o.result], f"{o.elapsed_s:.1f}s", o.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def summary(outcomes: Sequence[Outcome]) -> str:
    counts = {r: sum(o.result is r for o in outcomes) for r in Result}
    return (
        f"{len(outcomes)} cases: {counts[Result.PASS]} passed, {counts[Result.FAIL]} failed,"
        f" {counts[Result.UNSUPPORTED]} unsupported"
    )


def junit_xml(outcomes: Sequence[Outcome], *, suite: str = "qnet-interop") -> str:
    """One <testsuite> with one <testcase> per case: a failure element for a fail, a skipped
    element for an unsupported case; the spec section is a property and in the name."""
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(outcomes)),
        failures=str(sum(o.result is Result.FAIL for o in outcomes)),
        skipped=str(sum(o.result is Result.UNSUPPORTED for o in outcomes)),
        errors="0",
        time=f"{sum(o.elapsed_s for o in outcomes):.3f}",
    )
    for o in outcomes:
        tc = ET.SubElement(
            root, "testcase", classname=suite, name=o.case.id, time=f"{o.elapsed_s:.3f}"
        )
        props = ET.SubElement(tc, "properties")
        ET.SubElement(props, "property", name="spec_section", value=o.case.section)
        if o.result is Result.FAIL:
            ET.SubElement(tc, "failure", message=o.detail[:500]).text = o.detail
        elif o.result is Result.UNSUPPORTED:
            ET.SubElement(tc, "skipped", message=o.detail[:500])
        else:
            ET.SubElement(tc, "system-out").text = o.detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
