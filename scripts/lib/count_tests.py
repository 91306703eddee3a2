#!/usr/bin/env python3
"""Count test cases in a meson testlog.json (meson >= 1.0).

Usage: count_tests.py TESTLOG.json [LABEL] [--ran FILE]

Prints one line on stdout,
    LIB_PASSED LIB_FAILED LIB_SKIPPED TOOL_PASSED TOOL_FAILED TOOL_SKIPPED
where "tool" counts the programs of meson suite 'tools' (tests of the test
tools: the fault proxy, testhttpd, the server smoke test, the netns rule
check, this script's own tests) and "lib" everything else (tests of the
library). On stderr: one line per failed test case (prefixed with LABEL),
With --ran FILE, one line "SUITE NAME" per program in the log is written
to FILE (scripts/test.sh compares them with the tests meson configured).

meson writes one JSON object per line, per test program, with its "result"
(OK, FAIL, SKIP, EXPECTEDFAIL, UNEXPECTEDPASS, TIMEOUT, ERROR, INTERRUPT, ...)
and its "stdout". Every test program here prints TAP (cmocka's
CMOCKA_MESSAGE_OUTPUT=TAP, or a script): each "ok" / "not ok" line is one
test case; "# SKIP" marks a skip. The rules, so that nothing is silently
missing from the count:
  - a program that crashed, timed out or exited non-zero counts as failed
    test cases: every case of its plan that never reported, and at least one;
  - a program that prints no plan ("1..N") is a failure (a program that
    exits early, or is not TAP, could otherwise count as passing), unless
    meson itself says SKIP (exit status 77) and it printed no test case;
  - a second plan, or more test cases than its plan, is a failure;
  - "# TODO" (an expected failure) is not allowed: a failure;
  - "1..0 # SKIP reason" skips the whole program (one skipped case).
"""
import json
import re
import sys

BAD = {"FAIL", "ERROR", "TIMEOUT", "INTERRUPT", "UNEXPECTEDPASS", "RUNNING", "PENDING"}
PLAN = re.compile(r"^1\.\.(\d+)\s*(?:#\s*(.*))?$")
CASE = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(.*))?$")
BAIL = re.compile(r"^Bail out!", re.IGNORECASE)
TOOL_SUITES = {"tools"}


def split_name(entry):
    """(suites, bare name) of a log entry. meson 1.0 writes no "suite" field
    but names a test "project:suite / name" ("project:s1+s2 / name" with
    several suites) when the build has more than one suite."""
    name = str(entry.get("name", "?"))
    suites = [str(s).split(":", 1)[-1] for s in entry.get("suite") or []]
    if " / " in name:
        prefix, bare = name.split(" / ", 1)
        if not suites and ":" in prefix:
            suites = [s for s in prefix.split(":", 1)[1].split("+") if s]
        name = bare
    return suites, name


def count_program(entry, label, fails):
    """(passed, failed, skipped) of one program of the log."""
    name = entry.get("name", "?")
    result = str(entry.get("result", "ERROR")).upper()
    if result.startswith("TESTRESULT."):
        result = result[len("TESTRESULT."):]
    rc = entry.get("returncode")
    out = entry.get("stdout") or ""
    passed = failed = skipped = 0
    plan = None
    plans = 0
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
            plans += 1
            if plans > 1:
                failed += 1
                fails.append(f"{label}{name}: a second TAP plan '{line}'")
                continue
            plan = int(m.group(1))
            if plan == 0:          # "1..0 # SKIP reason": the whole program skipped
                skipped += 1
            continue
        if BAIL.match(line):
            failed += 1
            fails.append(f"{label}{name}: {line}")
            continue
        m = CASE.match(line)
        if not m:
            continue
        ok = m.group(1) == "ok"
        directive = (m.group(4) or "").strip().lower()
        case = f"{m.group(2) or ''} {m.group(3) or ''}".strip()
        if directive.startswith("todo"):
            failed += 1
            fails.append(f"{label}{name} / {case}: '# TODO' is not allowed "
                         f"(an expected failure hides a broken promise): {line}")
        elif directive.startswith("skip"):
            skipped += 1
        elif ok:
            passed += 1
        else:
            failed += 1
            fails.append(f"{label}{name} / {case}")
            detail = 5

    seen = passed + failed + skipped
    if plan is None:
        if result == "SKIP" and seen == 0:
            return 0, 0, 1
        failed += 1
        fails.append(f"{label}{name}: printed no TAP plan (1..N): {result}, exit {rc}, "
                     f"{seen} test case lines; every test program must print its plan")
        return passed, failed, skipped
    if seen > plan and plan > 0:
        extra = seen - plan
        failed += 1
        fails.append(f"{label}{name}: {seen} test cases reported but its plan is 1..{plan} "
                     f"({extra} more than planned)")
    elif plan == 0 and seen > 1:
        failed += 1
        fails.append(f"{label}{name}: test cases reported after a '1..0' (skip all) plan")
    if plan and seen < plan:
        missing = plan - seen
        failed += missing
        fails.append(f"{label}{name}: {result}, {missing} of {plan} test cases never reported "
                     f"(exit {rc})")
    elif result in BAD and failed == 0:
        failed += 1
        fails.append(f"{label}{name}: {result} after its test cases "
                     f"(exit {rc}; see its stderr)")
    return passed, failed, skipped


def count_log(path, label, fails, ran):
    """Totals [lib p, f, s, tool p, f, s] of a whole log; ran gets (suite, name)."""
    totals = [0, 0, 0, 0, 0, 0]
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
                suites, bare = split_name(entry)
                for s in suites or ["-"]:
                    ran.append((s, bare))
                base = 3 if TOOL_SUITES.intersection(suites) else 0
                for i, v in enumerate(count_program(entry, label, fails)):
                    totals[base + i] += v
    except OSError as e:
        totals[1] += 1
        fails.append(f"{label}no test log ({e.strerror}: {path})")
    return totals


def main():
    args = sys.argv[1:]
    ranfile = None
    if "--ran" in args:
        i = args.index("--ran")
        if i + 1 >= len(args):
            sys.exit(__doc__)
        ranfile = args[i + 1]
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    path = args[0]
    label = (args[1] + ": ") if len(args) > 1 else ""
    fails = []
    ran = []
    totals = count_log(path, label, fails, ran)
    for line in fails:
        print(line, file=sys.stderr)
    if ranfile:
        with open(ranfile, "a", encoding="utf-8") as f:
            for s, name in ran:
                print(s, name, file=f)
    print(*totals)


if __name__ == "__main__":
    main()
