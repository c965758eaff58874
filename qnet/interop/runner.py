"""Running the suite: pick the cases, run each with its own deadline, report.

Each case runs in a worker thread with a deadline (``Context.deadline``) that every call it
makes is bounded by; the runner waits for it a little longer than that, and a case still
running then is reported as failed (its calls end at their own timeouts shortly after).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from qnet.interop import report, targets
from qnet.interop.registry import Case, Context, Failed, Outcome, Result, Unsupported, all_cases
from qnet.interop.tls import MissingCredential

#: How long past its deadline a case's thread gets to finish before it is given up.
_GRACE_S = 5.0


def run_case(
    case: Case, tgts: targets.Targets, timeout_s: float | None, allowance: float
) -> Outcome:
    limit = case.timeout_s if timeout_s is None else timeout_s
    ctx = Context(tgts, time.monotonic() + limit, allowance=allowance)
    box: list[tuple[Result, str]] = []

    def work() -> None:
        try:
            box.append((Result.PASS, case.run(ctx)))
        except Failed as exc:
            box.append((Result.FAIL, str(exc)))
        except (Unsupported, MissingCredential) as exc:
            box.append((Result.UNSUPPORTED, str(exc)))
        except Exception as exc:  # a case's crash is the daemon's failure to answer sensibly
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            box.append(
                (
                    Result.FAIL,
                    f"{type(exc).__name__}: {exc} (at {Path(tb.filename).name}:{tb.lineno})",
                )
            )

    started = time.monotonic()
    thread = threading.Thread(target=work, name=f"case-{case.id}", daemon=True)
    thread.start()
    thread.join(limit + _GRACE_S)
    ctx.close()
    elapsed = time.monotonic() - started
    if not box:
        return Outcome(case, Result.FAIL, f"did not finish within {limit:g} s", elapsed)
    result, detail = box[0]
    return Outcome(case, result, " ".join(detail.split()), elapsed)


def select(cases: Sequence[Case], ids: Sequence[str]) -> list[Case]:
    if not ids:
        return list(cases)
    known = {c.id: c for c in cases}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise SystemExit(f"qnet interop: unknown case {', '.join(unknown)} (see --list)")
    return [known[i] for i in ids]


def resolve(args: argparse.Namespace) -> targets.Targets:
    certs = targets.certs_dir(Path(args.certs)) if args.certs else None
    if args.addresses:
        tgts = targets.from_addresses(list(args.addresses), certs=certs)
    else:
        run_dir = Path(args.run_dir or os.environ.get("QNET_RUN_DIR") or ".qnet-run")
        tgts = targets.from_run_dir(run_dir.absolute(), certs)
    return targets.complete(tgts)


def main(args: argparse.Namespace) -> int:
    cases = all_cases()
    if args.list:
        for c in cases:
            print(f"{c.id:24} {c.section:60} {c.title}")
        return 0
    chosen = select(cases, args.case)
    try:
        tgts = resolve(args)
    except targets.TargetError as exc:
        print(f"qnet interop: {exc}", file=sys.stderr)
        return 2
    slots = ", ".join(f"{s.name} (at {s.daemon})" for s in tgts.slots) or "none"
    security = "plaintext" if tgts.certs is None else f"mutual TLS with {tgts.certs.path}"
    print(
        f"interop: {len(chosen)} cases against {', '.join(sorted(tgts.daemons))};"
        f" spec-peer slots: {slots}; {security}",
        flush=True,
    )
    outcomes = []
    for c in chosen:
        outcome = run_case(c, tgts, args.timeout, args.allowance)
        outcomes.append(outcome)
        print(f"  {outcome.result.value} {c.id} ({outcome.elapsed_s:.1f}s)", flush=True)
    print(report.matrix(outcomes))
    print(report.table(outcomes))
    print(report.summary(outcomes))
    if args.junit:
        Path(args.junit).write_text(report.junit_xml(outcomes), encoding="utf-8")
    return 1 if any(o.result is Result.FAIL for o in outcomes) else 0
