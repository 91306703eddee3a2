#!/usr/bin/env python3
"""The function length gate (after curl's scripts/top-length): no function in
src/ or adapters/ is longer than LIMIT lines, counted from the first line of
its signature to its closing brace, except those in the allow-list
(scripts/length-allow.txt: "file:function  # reason", one per line). An
allow-listed function that is no longer over the limit, or no longer exists,
is an error too, so the list only shrinks.

usage: check_length.py [SOURCE_ROOT]      prints TAP (one case)
       check_length.py --top N [ROOT]     the N longest functions
"""
import glob
import os
import re
import sys

LIMIT = 80
DIRS = ("src", "adapters")
ALLOW = "scripts/length-allow.txt"


def strip(text):
    """Comments, string and char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j]) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    """(name, first line, last line) of each function defined in path."""
    lines = strip(open(path, encoding="utf-8", errors="replace").read()).split("\n")
    found, depth, start, head = [], 0, None, []
    for no, line in enumerate(lines, 1):
        if depth == 0:
            if line.startswith("#"):
                head = []
                continue
            head.append((no, line))
        for ch in line:
            if ch == "{":
                if depth == 0:
                    sig = " ".join(l for _, l in head)
                    m = re.search(r"([A-Za-z_]\w*)\s*\([^;{}]*\)\s*(__attribute__\s*\(\(.*\)\)\s*)?\{?\s*$",
                                  sig[: sig.rfind("{") + 1] if "{" in sig else sig)
                    is_fn = (m and "=" not in sig.split("(")[0]
                             and not re.match(r"\s*(struct|union|enum|typedef)\b", sig)
                             and m.group(1) not in ("if", "for", "while", "switch", "sizeof"))
                    # the signature's first line: the first non-blank line of head
                    first = next((n for n, l in head if l.strip()), no)
                    start = (m.group(1), first) if is_fn else None
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    if start:
                        found.append((start[0], start[1], no))
                    start, head = None, []
        if depth == 0 and line.rstrip().endswith(";"):
            head = []
    return found


def scan(root):
    out = []
    for d in DIRS:
        for path in sorted(glob.glob(os.path.join(root, d, "**", "*.c"), recursive=True)):
            rel = os.path.relpath(path, root)
            for name, a, b in functions(path):
                out.append((b - a + 1, rel, name, a))
    return out


def read_allow(root):
    allow = {}
    p = os.path.join(root, ALLOW)
    if os.path.exists(p):
        for n, line in enumerate(open(p), 1):
            key, _, reason = line.partition("#")
            key = key.strip()
            if key:
                allow[key] = (reason.strip(), n)
    return allow


def main(argv):
    if argv and argv[0] == "--top":
        top = int(argv[1])
        root = argv[2] if len(argv) > 2 else "."
        for length, rel, name, a in sorted(scan(root), reverse=True)[:top]:
            print(f"{length:5d} {rel}:{name} (line {a})")
        return 0
    root = argv[0] if argv else "."
    funcs = scan(root)
    allow = read_allow(root)
    problems = []
    seen = set()
    for length, rel, name, a in sorted(funcs, reverse=True):
        key = f"{rel}:{name}"
        seen.add(key)
        if length <= LIMIT:
            if key in allow:
                problems.append(f"{ALLOW}:{allow[key][1]}: {key} is {length} lines now (<= {LIMIT}): "
                                f"remove it from the allow-list")
            continue
        if key not in allow:
            problems.append(f"{rel}:{a}: {name}() is {length} lines (limit {LIMIT}): split it, or "
                            f"add '{key}  # <why it must stay long>' to {ALLOW}")
        elif not allow[key][0]:
            problems.append(f"{ALLOW}:{allow[key][1]}: {key} has no reason")
    for key, (_, n) in allow.items():
        if key not in seen:
            problems.append(f"{ALLOW}:{n}: {key} no longer exists: remove it")
    print("1..1")
    for p in problems:
        print(f"# {p}")
    over = sum(1 for f in funcs if f[0] > LIMIT)
    print(f"{'not ok' if problems else 'ok'} 1 - {len(funcs)} functions, {over} over {LIMIT} lines, "
          f"all allow-listed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
