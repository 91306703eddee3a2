#!/usr/bin/env bash
# scripts/fuzz.sh — build the libFuzzer harnesses (tests/fuzz/) and run each
# for a bounded time.
#
#   bash scripts/fuzz.sh [--no-merge] [SECONDS]   each target for SECONDS (default 20)
#   bash scripts/fuzz.sh 600 admin                 only the named targets
#
# Configures build-fuzz/ (CC=clang, -Dfuzz=true, the library under
# ASan+UBSan) and builds every fuzz_* target meson defines there (so a new
# harness in tests/fuzz/meson.build is picked up with no change here; a
# tests/fuzz/fuzz_<t>.c that the build does not define is reported MISSING).
# For each target:
#   1. replays every file of tests/fuzz/crashes/<target>/ (past findings,
#      README.md there): a crash that reproduces fails the run;
#   2. fuzzes for -max_total_time=SECONDS with a work corpus that starts as
#      a copy of tests/fuzz/corpus/<target>/;
#   3. unless --no-merge: merges the inputs of the work corpus that add
#      coverage back into tests/fuzz/corpus/<target>/ (libFuzzer -merge=1,
#      so only new coverage, named by their SHA-1), at most FUZZ_MAX_FILES
#      files (default 400) and FUZZ_MAX_LEN bytes each (default 8192) per
#      target, so the corpus grows from run to run: commit what it adds.
# Prints one line per target and per replay:
#   fuzz <target> <N> runs <ok|CRASH|ERROR|MISSING> [detail]
#   fuzz <target>/crashes <K> files <ok|CRASH> [detail]
# where N is from libFuzzer's final "Done N runs" line. A crash's reproducer
# and log are copied to build-fuzz/fuzz-crashes/<target>/; replay one with
#   build-fuzz/tests/fuzz/fuzz_<target> FILE
# and keep it under tests/fuzz/crashes/<target>/ once fixed.
# Targets run FUZZ_JOBS at a time (default: one per CPU; each fuzzer is one
# process), so a run takes about SECONDS x targets / CPUs.
# Exits non-zero if any target crashed, is missing or could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source-path=SCRIPTDIR/..
. scripts/lib/packages.sh

MERGE=1
if [[ ${1:-} == --no-merge ]]; then MERGE=0; shift; fi
SECS=${1:-20}
shift || true
MAX_FILES=${FUZZ_MAX_FILES:-400}
MAX_LEN=${FUZZ_MAX_LEN:-8192}
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
DIR=build-fuzz
# shellcheck disable=SC2054 # commas are meson's list syntax
OPTS=(-Dfuzz=true -Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false
      --buildtype=debugoptimized)

TARGETS=("$@")

ensure_packages clang libclang-rt-14-dev meson ninja-build pkg-config libcmocka-dev \
  libhiredis-dev libpq-dev libcurl4-openssl-dev >/dev/null

stamp="$DIR/.resil-fuzz-setup"
want="CC=clang CXX=clang++ meson setup ${OPTS[*]}"
if [[ ! -f $DIR/build.ninja || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
  rm -rf "$DIR"
  if ! CC=clang CXX=clang++ meson setup "$DIR" "${OPTS[@]}" >"$DIR.setup.log" 2>&1; then
    cat "$DIR.setup.log" >&2; rm -f "$DIR.setup.log"
    echo "fuzz: meson setup failed" >&2
    exit 1
  fi
  mv -f "$DIR.setup.log" "$DIR/meson-logs/setup-output.log"
  echo "$want" >"$stamp"
fi
# The targets: those named, else every fuzz_* executable of the build.
MISSING=()
if ((${#TARGETS[@]} == 0)); then
  mapfile -t TARGETS < <(meson introspect --targets "$DIR" | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["type"] == "executable" and t["name"].startswith("fuzz_"):
        print(t["name"][5:])' | sort -u)
  for f in tests/fuzz/fuzz_*.c; do
    t=${f##*/fuzz_}
    t=${t%.c}
    [[ " ${TARGETS[*]} " == *" $t "* ]] || MISSING+=("$t")
  done
fi
if ((${#TARGETS[@]} == 0)); then
  echo "fuzz: no fuzz_* target in $DIR" >&2
  exit 1
fi
log="$DIR/meson-logs/fuzz-compile.log"
if ! meson compile -C "$DIR" "${TARGETS[@]/#/fuzz_}" >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "fuzz: build failed (see $log)" >&2
  exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/resil-fuzz.XXXXXX")
FZ_PID=
# shellcheck disable=SC2317 # called from the EXIT trap
JOB_PIDS=()
cleanup() {
  if [[ -n $FZ_PID ]] && kill -0 "$FZ_PID" 2>/dev/null; then
    kill -TERM "$FZ_PID" 2>/dev/null; wait "$FZ_PID" 2>/dev/null || true
  fi
  local p
  for p in "${JOB_PIDS[@]}"; do    # the targets' subshells and their fuzzers
    pkill -TERM -P "$p" 2>/dev/null || true
    kill -TERM "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

bad=0
for t in "${MISSING[@]}"; do
  echo "fuzz $t 0 runs MISSING tests/fuzz/fuzz_$t.c is not built (its adapter missing?)"
  bad=1
done

# replay TARGET EXE: every file of tests/fuzz/crashes/TARGET/ once.
replay() {
  local t=$1 exe=$2 dir="tests/fuzz/crashes/$1" files=() f rc
  shopt -s nullglob
  for f in "$dir"/*; do [[ -f $f && ${f##*/} != *.md ]] && files+=("$f"); done
  shopt -u nullglob
  ((${#files[@]})) || return 0
  rc=0
  "$exe" -runs=1 -timeout=10 -rss_limit_mb=2048 "${files[@]}" >"$TMP/$t.replay.log" 2>&1 &
  FZ_PID=$!
  wait "$FZ_PID" || rc=$?
  FZ_PID=
  if ((rc == 0)); then
    echo "fuzz $t/crashes ${#files[@]} files ok"
  else
    bad=1
    local what
    what=$(grep -m1 -E '^==[0-9]+==ERROR|^SUMMARY|runtime error|out-of-memory|deadly signal|timeout' \
             "$TMP/$t.replay.log" || true)
    echo "fuzz $t/crashes ${#files[@]} files CRASH a past finding reproduces: ${what:0:160}"
    tail -n 30 "$TMP/$t.replay.log" | sed 's/^/    /' >&2
  fi
}

# merge_back TARGET EXE WORK: add the work corpus's new coverage to the
# repository corpus, bounded in file count and size.
merge_back() {
  local t=$1 exe=$2 work=$3 repo="tests/fuzz/corpus/$1" n before
  ((MERGE)) || return 0
  mkdir -p "$repo"
  before=$(find "$repo" -maxdepth 1 -type f | wc -l)
  if ((before >= MAX_FILES)); then
    echo "    $t: corpus has $before files (FUZZ_MAX_FILES=$MAX_FILES): nothing merged" >&2
    return 0
  fi
  # Merge into a scratch copy, then move at most the allowed new files in.
  local into="$work/merge"
  rm -rf "$into"; mkdir -p "$into"
  cp -R "$repo/." "$into/"
  if ! "$exe" -merge=1 -max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 \
       "$into" "$work/corpus" >"$work/merge.log" 2>&1; then
    echo "    $t: merge failed (log: $work/merge.log)" >&2
    return 0
  fi
  n=0
  local f
  while IFS= read -r f; do
    [[ -e $repo/${f##*/} ]] && continue
    (($(stat -c %s "$f") <= MAX_LEN)) || continue
    ((before + n < MAX_FILES)) || break
    cp "$f" "$repo/"
    n=$((n + 1))
  done < <(find "$into" -maxdepth 1 -type f | sort)
  ((n == 0)) || echo "    $t: $n new inputs merged into $repo (commit them)" >&2
}

# fuzz_one TARGET: replay its past findings, fuzz it for SECS from a copy of
# its corpus, merge what adds coverage back. Prints its "fuzz ..." lines;
# returns non-zero if anything failed. Runs in a background subshell.
fuzz_one() {
  local t=$1 exe seeds work rc runs arts keep what bad=0
  exe="$DIR/tests/fuzz/fuzz_$t"
  seeds="tests/fuzz/corpus/$t"
  work="$TMP/$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  [[ -d $seeds ]] && cp -R "$seeds/." "$work/corpus/"
  replay "$t" "$exe"
  rc=0
  # In the background, so that a signal stops the run at once.
  "$exe" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1 &
  FZ_PID=$!
  wait "$FZ_PID" || rc=$?
  FZ_PID=
  runs=$(sed -n 's/^Done \([0-9][0-9]*\) runs.*/\1/p' "$work/log" | tail -n1)
  shopt -s nullglob
  arts=("$work/artifacts/"*)
  shopt -u nullglob
  if ((rc == 0)) && [[ -n $runs ]] && ((${#arts[@]} == 0)); then
    echo "fuzz $t $runs runs ok"
    merge_back "$t" "$exe" "$work"
    return "$bad"
  fi
  bad=1
  keep="$DIR/fuzz-crashes/$t"
  mkdir -p "$keep"
  cp "$work/log" "$keep/log.txt"
  ((${#arts[@]} == 0)) || cp "${arts[@]}" "$keep/"
  if ((${#arts[@]})); then
    what=$(grep -m1 -E '^==[0-9]+==ERROR|^SUMMARY|runtime error|out-of-memory|deadly signal' "$work/log" || true)
    echo "fuzz $t ${runs:-?} runs CRASH ${what:0:160} (reproducer and log in $keep/)"
  else
    echo "fuzz $t ${runs:-?} runs ERROR exit $rc, no \"Done\" line (log in $keep/log.txt)"
  fi
  tail -n 40 "$work/log" | sed 's/^/    /' >&2
  return 1
}

# The targets run FUZZ_JOBS at a time (default: one per CPU), each in its
# own subshell with its output kept apart and printed in target order.
JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
((JOBS >= 1)) || JOBS=1
JOB_PIDS=()
for t in "${TARGETS[@]}"; do
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
  ( rc=0; fuzz_one "$t" || rc=$?; echo "$rc" >"$TMP/$t.rc" ) >"$TMP/$t.out" 2>"$TMP/$t.err" &
  JOB_PIDS+=($!)
done
for p in "${JOB_PIDS[@]}"; do wait "$p" || true; done
JOB_PIDS=()
for t in "${TARGETS[@]}"; do
  cat "$TMP/$t.out"
  cat "$TMP/$t.err" >&2
  [[ $(cat "$TMP/$t.rc" 2>/dev/null) == 0 ]] || bad=1
done
exit "$bad"
