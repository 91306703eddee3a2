#!/usr/bin/env python3
"""Check that nothing is silently missing from a build's test run.

Usage: check_manifest.py BUILD_DIR MANIFEST EXPECT_ADAPTERS SUITES RAN_FILE

  BUILD_DIR        a configured meson build directory
  MANIFEST         tests/expected-tests.txt (name, suite, needed adapters)
  EXPECT_ADAPTERS  comma-separated adapters that must be built ("" for none),
                   e.g. those whose driver package is installed
  SUITES           comma-separated suites that were run in this build; "all"
                   stands for every suite but soak (a plain `meson test`)
  RAN_FILE         "SUITE NAME" lines of the programs that ran
                   (count_tests.py --ran)

Prints one line per problem on stdout and exits 1 if there is any:
  - an expected adapter that was not built;
  - a manifest test whose adapters are built that meson did not configure;
  - a configured test missing from the manifest;
  - a configured test of a run suite that did not run.
"""
import json
import subprocess
import sys

ADAPTER_TARGETS = {"redis": "resil-redis", "pg": "resil-pg", "http": "resil-http"}


def introspect(build_dir, what):
    p = subprocess.run(["meson", "introspect", what, build_dir], capture_output=True,
                       text=True, timeout=120, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"meson introspect {what} {build_dir}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    build_dir, manifest, expect, suites, ranfile = sys.argv[1:]
    expect = {a for a in expect.split(",") if a}
    suites = {s for s in suites.split(",") if s}
    problems = []
    try:
        targets = introspect(build_dir, "--targets")
        tests = introspect(build_dir, "--tests")
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as e:
        print(f"cannot read what meson configured: {e}")
        return 1
    names = {t["name"] for t in targets}
    built = {a for a, lib in ADAPTER_TARGETS.items() if lib in names}
    for a in sorted(expect - built):
        problems.append(f"adapter {a} was not built although its driver is installed")

    configured = {}
    for t in tests:
        configured[t["name"]] = {str(s).split(":", 1)[-1] for s in t.get("suite") or []}

    listed = {}
    with open(manifest, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            if len(line) != 3:
                problems.append(f"{manifest}:{n}: want 'name suite needs'")
                continue
            name, suite, needs = line
            needs = set() if needs == "-" else set(needs.split(","))
            listed[name] = (suite, needs)
            if needs <= built and name not in configured:
                problems.append(f"test {name} (suite {suite}, needs "
                                f"{','.join(sorted(needs)) or 'nothing'}) is not configured "
                                f"by meson although its adapters are built")
    for name in sorted(set(configured) - set(listed)):
        problems.append(f"test {name} is configured by meson but not listed in {manifest}: "
                        f"add it (name, suite, adapters it needs)")

    ran = set()
    try:
        with open(ranfile, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    ran.add(parts[1])
    except OSError:
        pass
    for name, ts in sorted(configured.items()):
        run_here = ts & suites or ("all" in suites and ts - {"soak"})
        if run_here and name not in ran:
            problems.append(f"test {name} (suite {','.join(sorted(ts))}) is configured but "
                            f"did not run")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
