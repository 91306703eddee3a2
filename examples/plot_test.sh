#!/usr/bin/env bash
# The demo's picture (meson test brownout-plot, TAP, one case): runs the demo
# on its simulated dependency with --phase-seconds 1 (8 s), then checks that
# it wrote the timeline (a header naming every side, one line per 100 ms, the
# six phases) and that scripts/demo-plot.gp draws it into a PNG with gnuplot.
#
#   plot_test.sh BROWNOUT DEMO_PLOT_GP OUT_DIR
set -uo pipefail
brownout=$1 gp=$2 out=$3
echo "1..1"
fail() { echo "not ok 1 - brownout-plot: $*"; exit 1; }
command -v gnuplot >/dev/null || fail "gnuplot is not installed (Debian gnuplot-nox; scripts/lib/packages.sh)"
mkdir -p "$out" && rm -f "$out"/brownout-timeline.tsv "$out"/brownout-phases.tsv "$out"/brownout.png
"$brownout" --backend sim --phase-seconds 1 --out-dir "$out" >"$out/brownout.log" 2>&1 ||
  fail "the demo failed (exit $?): see $out/brownout.log"
tl=$out/brownout-timeline.tsv ph=$out/brownout-phases.tsv
[[ -s $tl && -s $ph ]] || fail "no brownout-timeline.tsv / brownout-phases.tsv in $out"
head -1 "$tl" | grep -q $'resil_p99_ms.*static_p99_ms.*naive_p99_ms' || fail "timeline header: $(head -1 "$tl")"
lines=$(grep -vc '^#' "$tl")
# 8 s of schedule at 100 ms per line, a line or two short at the ends.
((lines >= 75 && lines <= 82)) || fail "timeline has $lines lines, expected ~80 (8 s / 100 ms)"
cols=$(awk -F'\t' '!/^#/ {print NF}' "$tl" | sort -u)
[[ $cols == 23 ]] || fail "timeline rows have $cols columns, expected 23"
names=$(awk -F'\t' '!/^#/ {printf "%s ", $3}' "$ph")
[[ $names == "healthy brownout saturated partial outage recovery " ]] || fail "phases: $names"
gnuplot -e "dir='$out'; out='$out/brownout.png'" "$gp" >"$out/gnuplot.log" 2>&1 ||
  fail "gnuplot failed: $(head -3 "$out/gnuplot.log")"
magic=$(head -c 8 "$out/brownout.png" | od -An -tx1 | tr -d ' \n')
[[ $magic == 89504e470d0a1a0a ]] || fail "$out/brownout.png is not a PNG"
size=$(stat -c %s "$out/brownout.png")
((size > 20000)) || fail "$out/brownout.png is only $size bytes"
echo "ok 1 - brownout-plot ($lines timeline lines, PNG $size bytes)"
