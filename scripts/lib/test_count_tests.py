#!/usr/bin/env python3
"""Tests of scripts/lib/count_tests.py on sample meson test logs, so that its
TAP rules cannot silently regress. Prints TAP; exits 1 if a case fails.

Usage: test_count_tests.py [PATH_TO_count_tests.py]
(meson runs it in suite 'tools'; scripts/test.sh counts it there.)
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "count_tests.py")


def prog(name, stdout, result="OK", returncode=0, suite="unit"):
    return {"name": name, "result": result, "returncode": returncode,
            "suite": [f"resil:{suite}"], "stdout": stdout}


def run(entries, raw=None):
    """Run count_tests.py on a log of entries; return (totals, stderr, ran)."""
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "testlog.json")
        ranf = os.path.join(d, "ran.txt")
        with open(log, "w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps(e) + "\n")
            if raw:
                f.write(raw)
        p = subprocess.run([sys.executable, SCRIPT, log, "lbl", "--ran", ranf],
                           capture_output=True, text=True, timeout=30, check=False)
        ran = open(ranf, encoding="utf-8").read() if os.path.exists(ranf) else ""
    if p.returncode != 0:
        raise AssertionError(f"count_tests.py exited {p.returncode}: {p.stderr}")
    return [int(x) for x in p.stdout.split()], p.stderr, ran


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def expect(entries, lib, err_has=None, tool=(0, 0, 0), raw=None):
    totals, err, _ = run(entries, raw)
    want = list(lib) + list(tool)
    assert totals == want, f"counted {totals}, want {want}; stderr: {err!r}"
    if err_has:
        assert err_has in err, f"stderr lacks {err_has!r}: {err!r}"


@case
def passing_program_counts_each_case():
    expect([prog("a", "1..3\nok 1 - x\nok 2 - y\nok 3 - z\n")], (3, 0, 0))


@case
def cmocka_skip_is_a_skip():
    expect([prog("a", "1..2\nok 1 - x\nnot ok 2 - y # SKIP\n")], (1, 0, 1))


@case
def no_plan_is_a_failure():
    expect([prog("a", "ok 1 - x\nok 2 - y\n")], (2, 1, 0), "printed no TAP plan")


@case
def no_output_at_all_is_a_failure():
    expect([prog("a", "")], (0, 1, 0), "printed no TAP plan")


@case
def meson_skip_without_output_is_a_skip():
    expect([prog("a", "", result="SKIP", returncode=77)], (0, 0, 1))


@case
def more_cases_than_planned_is_a_failure():
    expect([prog("a", "1..2\nok 1 - x\nok 2 - y\nok 3 - z\n")], (3, 1, 0),
           "more than planned")


@case
def not_ok_todo_is_a_failure():
    expect([prog("a", "1..2\nok 1 - x\nnot ok 2 - y # TODO later\n")], (1, 1, 0),
           "TODO")


@case
def ok_todo_is_a_failure_too():
    expect([prog("a", "1..1\nok 1 - y # TODO later\n")], (0, 1, 0), "TODO")


@case
def crash_counts_the_cases_that_never_reported():
    expect([prog("a", "1..4\nok 1 - x\n", result="ERROR", returncode=-11)], (1, 3, 0),
           "3 of 4 test cases never reported")


@case
def nonzero_exit_after_all_cases_is_a_failure():
    expect([prog("a", "1..1\nok 1 - x\n", result="FAIL", returncode=1)], (1, 1, 0),
           "after its test cases")


@case
def timeout_is_a_failure():
    expect([prog("a", "1..1\nok 1 - x\n", result="TIMEOUT", returncode=-15)], (1, 1, 0))


@case
def second_plan_is_a_failure():
    expect([prog("a", "1..1\nok 1 - x\n1..1\nok 1 - x\n")], (2, 2, 0), "second TAP plan")


@case
def skip_all_plan_is_one_skip():
    expect([prog("a", "1..0 # SKIP no netns\n")], (0, 0, 1))


@case
def bail_out_is_a_failure():
    expect([prog("a", "1..2\nok 1 - x\nBail out! server gone\n", result="FAIL",
                 returncode=1)], (1, 1, 0), "Bail out")


@case
def failed_case_is_named_with_its_diagnostics():
    expect([prog("a", "1..1\nnot ok 1 - broken_case\n# expected 1 got 2\n",
                 result="FAIL", returncode=1)], (0, 1, 0), "lbl: a / 1 broken_case")


@case
def tools_suite_is_counted_apart():
    expect([prog("a", "1..2\nok 1 - x\nok 2 - y\n"),
            prog("t", "1..3\nok 1 - x\nnot ok 2 - y\nok 3 - z # SKIP\n", suite="tools",
                 result="FAIL", returncode=1)],
           (2, 0, 0), tool=(1, 1, 1))


@case
def suite_from_meson_test_name():
    # meson 1.0 writes no "suite" field: the name says "project:suite / name".
    e = {"name": "resil:tools / faultproxy", "result": "OK", "returncode": 0,
         "stdout": "1..1\nok 1 - x\n"}
    e2 = {"name": "resil:unit+slow / dep", "result": "OK", "returncode": 0,
          "stdout": "1..1\nok 1 - x\n"}
    totals, _, ran = run([e, e2])
    assert totals == [1, 0, 0, 1, 0, 0], totals
    assert ran.split("\n")[:3] == ["tools faultproxy", "unit dep", "slow dep"], repr(ran)


@case
def unreadable_log_line_is_a_failure():
    expect([prog("a", "1..1\nok 1 - x\n")], (1, 1, 0), "unreadable", raw="{not json\n")


@case
def missing_log_is_a_failure():
    p = subprocess.run([sys.executable, SCRIPT, "/nonexistent/testlog.json", "lbl"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert p.stdout.split() == ["0", "1", "0", "0", "0", "0"], p.stdout
    assert "no test log" in p.stderr, p.stderr


@case
def ran_file_lists_every_program_with_its_suite():
    _, _, ran = run([prog("a", "1..1\nok 1 - x\n"),
                     prog("b", "1..1\nok 1 - x\n", suite="tools")])
    assert ran.split("\n")[:2] == ["unit a", "tools b"], repr(ran)


def main():
    print(f"1..{len(CASES)}")
    bad = 0
    for i, fn in enumerate(CASES, 1):
        try:
            fn()
            print(f"ok {i} - {fn.__name__}")
        except Exception as e:  # noqa: BLE001 - report any failure as TAP
            bad += 1
            print(f"not ok {i} - {fn.__name__}")
            for line in str(e).splitlines():
                print(f"# {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
