#!/usr/bin/env python3
"""The C++ header test: every macro an installed header defines is used in
tests/cxx/test_headers.cc, the uninstalled test-hook header stays
uninstalled, and the compiled program passes.

usage: check_cxx.py SOURCE_ROOT TEST_HEADERS_CC PROGRAM
"""
import glob
import os
import re
import subprocess
import sys


def main():
    root, cc, prog = sys.argv[1:4]
    problems = []
    headers = sorted(glob.glob(os.path.join(root, "include/resil/*.h")))
    headers.append(os.path.join(root, "include/resil/version.h.in"))
    installed = [h for h in headers if os.path.basename(h) != "testing.h"]

    # testing.h must not be installed by any meson.build.
    for mb in glob.glob(os.path.join(root, "include/resil/meson.build")) + glob.glob(
        os.path.join(root, "adapters/*/meson.build")
    ):
        if "testing.h" in open(mb).read():
            problems.append(f"{mb} installs testing.h (test hooks are not part of the API)")

    source = open(cc).read()
    used = set(re.findall(r"\bRESIL_[A-Z0-9_]+\b", source))
    for h in installed:
        text = open(h).read()
        for name in re.findall(r"^\s*#\s*define\s+(RESIL_[A-Z0-9_]+)", text, re.M):
            if name.endswith("_H") or name.endswith("_"):
                continue  # include guards, internal helpers (RESIL_HANDLE_)
            if name not in used:
                problems.append(
                    f"{os.path.relpath(h, root)} defines {name}, which "
                    f"tests/cxx/test_headers.cc does not use: use it there (C++17, -pedantic-errors)"
                )
    for p in problems:
        print(f"# {p}")
    r = subprocess.run([prog], capture_output=True, text=True)
    sys.stdout.write("".join("# " + l + "\n" for l in r.stdout.splitlines()))
    sys.stdout.write("".join("# " + l + "\n" for l in r.stderr.splitlines()))
    if r.returncode != 0:
        problems.append(f"{prog} exited {r.returncode}")
    print("1..2")
    print(("not ok" if any("defines" in p or "installs" in p for p in problems) else "ok")
          + " 1 - every public macro is used from C++17")
    print(("not ok" if r.returncode != 0 else "ok") + " 2 - the C++ program passes")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
