#!/usr/bin/env python3
"""Each library exports exactly the symbols its list in abi/ names, as curl
checks symbols-in-versions: a new export is added to the list on purpose, a
removed one is an ABI break (docs/abi.md). Each listed symbol is declared in
an installed header (include/resil/*.h but testing.h), except those marked
"# test hook", which are declared in include/resil/testing.h only.

Each library's SONAME is NAME.so.SOVERSION (meson.build's resil_soversion).

usage: check_symbols.py SOURCE_ROOT SOVERSION NAME LIBRARY.so [NAME LIBRARY.so ...]
       (NAME: libresil, libresil-redis, ...; the list is abi/NAME.symbols)
Prints TAP: one case per library.
"""
import glob
import os
import re
import subprocess
import sys


def listed(path):
    syms = {}
    for n, line in enumerate(open(path), 1):
        text, _, comment = line.partition("#")
        name = text.strip()
        if name:
            syms[name] = ("test hook" in comment, n)
    return syms


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                         check=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            names.add(parts[2].split("@")[0])
    return names


def declared(headers, name):
    pat = re.compile(r"\b" + re.escape(name) + r"\s*\(")
    return [h for h, text in headers.items() if pat.search(text)]


def main():
    root, soversion = sys.argv[1], sys.argv[2]
    pairs = list(zip(sys.argv[3::2], sys.argv[4::2]))
    hdrs = {}
    for h in glob.glob(os.path.join(root, "include/resil/*.h")):
        text = re.sub(r"/\*.*?\*/", " ", open(h).read(), flags=re.S)  # declarations only
        hdrs[os.path.basename(h)] = re.sub(r"//[^\n]*", " ", text)
    public = {k: v for k, v in hdrs.items() if k != "testing.h"}
    testing = {k: v for k, v in hdrs.items() if k == "testing.h"}
    print(f"1..{len(pairs)}")
    failed = 0
    for i, (name, lib) in enumerate(pairs, 1):
        lst = f"abi/{name}.symbols"
        want = listed(os.path.join(root, lst))
        have = exported(lib)
        problems = []
        for s in sorted(have - set(want)):
            problems.append(f"{os.path.basename(lib)} exports {s}, which {lst} does not list: "
                            f"add the line '{s}' to {lst} (sorted) if this export is meant, "
                            f"and document it in its public header")
        for s in sorted(set(want) - have):
            problems.append(f"{lst}:{want[s][1]} lists {s}, which {os.path.basename(lib)} does not "
                            f"export: removing an export breaks the ABI (docs/abi.md); if meant, "
                            f"delete the line and say so in CHANGELOG.md")
        for s, (hook, n) in sorted(want.items()):
            if s not in have:
                continue
            if hook:
                if not declared(testing, s):
                    problems.append(f"{lst}:{n}: test hook {s} is not declared in "
                                    f"include/resil/testing.h")
                for h in declared(public, s):
                    problems.append(f"{lst}:{n}: test hook {s} is declared in the installed "
                                    f"header include/resil/{h}: move it to testing.h")
            elif not declared(public, s):
                problems.append(f"{lst}:{n}: {s} is exported but declared in no installed "
                                f"header under include/resil/ (declare and document it, or "
                                f"make it static / hidden)")
        dyn = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True).stdout
        m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", dyn)
        if not m or m.group(1) != f"{name}.so.{soversion}":
            problems.append(f"{os.path.basename(lib)}: SONAME is {m.group(1) if m else 'missing'}, "
                            f"expected {name}.so.{soversion} (soversion : resil_soversion)")
        lines = list(open(os.path.join(root, lst)))
        names = [ln.partition("#")[0].strip() for ln in lines]
        names = [x for x in names if x]
        if names != sorted(names):
            problems.append(f"{lst} is not sorted")
        for p in problems:
            print(f"# {p}")
        ok = not problems
        failed += not ok
        print(f"{'ok' if ok else 'not ok'} {i} - {name}: {len(have)} exports match {lst}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
