#!/usr/bin/env python3
"""Count test cases in a meson testlog.json (meson >= 1.0).

Usage: count_tests.py TESTLOG.json [LABEL]

Prints "PASSED FAILED SKIPPED" on stdout, and one line per failed test case
(prefixed with LABEL) on stderr.

meson writes one JSON object per line, per test program, with its "result"
(OK, FAIL, SKIP, EXPECTEDFAIL, UNEXPECTEDPASS, TIMEOUT, ERROR, INTERRUPT, ...)
and its "stdout". For TAP programs (every cmocka test here) each "ok" /
"not ok" line is one test case; "# SKIP" marks a skip, "# TODO" an expected
failure. A program that crashed, timed out or exited non-zero counts as
failed test cases: every case of its plan that never reported, and at least
one. A program that is not TAP counts as one case.
"""
import json
import re
import sys

BAD = {"FAIL", "ERROR", "TIMEOUT", "INTERRUPT", "UNEXPECTEDPASS", "RUNNING", "PENDING"}
PLAN = re.compile(r"^1\.\.(\d+)\s*(?:#\s*(.*))?$")
CASE = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(.*))?$")
BAIL = re.compile(r"^Bail out!", re.IGNORECASE)


def count_program(entry, label, fails):
    name = entry.get("name", "?")
    result = str(entry.get("result", "ERROR")).upper()
    if result.startswith("TESTRESULT."):
        result = result[len("TESTRESULT."):]
    out = entry.get("stdout") or ""
    passed = failed = skipped = 0
    plan = None
    tap = False
    detail = 0                     # diagnostic lines still to copy after a "not ok"
    for line in out.splitlines():
        line = line.rstrip("\r")
        if detail and line.startswith("#") and not CASE.match(line[1:].strip()):
            fails.append("      " + line)
            detail -= 1
            continue
        detail = 0
        m = PLAN.match(line)
        if m:
            tap = True
            plan = int(m.group(1))
            if plan == 0:          # "1..0 # SKIP reason": the whole program skipped
                skipped += 1
            continue
        if BAIL.match(line):
            tap = True
            failed += 1
            fails.append(f"{label}{name}: {line}")
            continue
        m = CASE.match(line)
        if not m:
            continue
        tap = True
        ok = m.group(1) == "ok"
        directive = (m.group(4) or "").strip().lower()
        case = f"{m.group(2) or ''} {m.group(3) or ''}".strip()
        if directive.startswith("skip"):
            skipped += 1
        elif directive.startswith("todo"):
            if ok:
                passed += 1        # an unexpected pass of a TODO is still a pass
            else:
                skipped += 1
        elif ok:
            passed += 1
        else:
            failed += 1
            fails.append(f"{label}{name} / {case}")
            detail = 5

    if not tap:
        if result in ("OK", "EXPECTEDFAIL"):
            return 1, 0, 0
        if result == "SKIP":
            return 0, 0, 1
        fails.append(f"{label}{name}: {result} (exit {entry.get('returncode')})")
        return 0, 1, 0

    seen = passed + failed + skipped
    if plan and seen < plan:
        missing = plan - seen
        failed += missing
        fails.append(f"{label}{name}: {result}, {missing} of {plan} test cases never reported "
                     f"(exit {entry.get('returncode')})")
    elif result in BAD and failed == 0:
        failed += 1
        fails.append(f"{label}{name}: {result} after its test cases "
                     f"(exit {entry.get('returncode')}; see its stderr)")
    return passed, failed, skipped


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    label = (sys.argv[2] + ": ") if len(sys.argv) > 2 else ""
    totals = [0, 0, 0]
    fails = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    totals[1] += 1
                    fails.append(f"{label}{path}:{n}: unreadable test log line")
                    continue
                for i, v in enumerate(count_program(entry, label, fails)):
                    totals[i] += v
    except OSError as e:
        totals[1] += 1
        fails.append(f"{label}no test log ({e.strerror}: {path})")
    for line in fails:
        print(line, file=sys.stderr)
    print(*totals)


if __name__ == "__main__":
    main()
