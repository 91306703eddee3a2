#!/usr/bin/env bash
# scripts/fuzz.sh — build the libFuzzer harnesses (tests/fuzz/) and run each
# for a bounded time.
#
#   bash scripts/fuzz.sh [SECONDS]        each target for SECONDS (default 20)
#   bash scripts/fuzz.sh 600 admin        only the named targets
#
# Configures build-fuzz/ (CC=clang, -Dfuzz=true, the library under
# ASan+UBSan), builds the fuzz_* targets, and runs each with
# -max_total_time=SECONDS on a COPY of its seed corpus (tests/fuzz/corpus/
# <target>/, never modified) in a temporary directory. Prints one line per
# target:
#   fuzz <target> <N> runs <ok|CRASH|ERROR> [detail]
# where N is from libFuzzer's final "Done N runs" line. A crash's reproducer
# and log are copied to build-fuzz/fuzz-crashes/<target>/; replay one with
#   build-fuzz/tests/fuzz/fuzz_<target> FILE
# Exits non-zero if any target crashed or could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source-path=SCRIPTDIR/..
. scripts/lib/packages.sh

SECS=${1:-20}
shift || true
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
DIR=build-fuzz
# shellcheck disable=SC2054 # commas are meson's list syntax
OPTS=(-Dfuzz=true -Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false
      --buildtype=debugoptimized)

TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
  for f in tests/fuzz/fuzz_*.c; do
    t=${f##*/fuzz_}
    TARGETS+=("${t%.c}")
  done
fi

ensure_packages clang libclang-rt-14-dev meson ninja-build pkg-config libcmocka-dev \
  libhiredis-dev libpq-dev libcurl4-openssl-dev >/dev/null

stamp="$DIR/.resil-fuzz-setup"
want="CC=clang meson setup ${OPTS[*]}"
if [[ ! -f $DIR/build.ninja || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
  rm -rf "$DIR"
  if ! CC=clang meson setup "$DIR" "${OPTS[@]}" >"$DIR.setup.log" 2>&1; then
    cat "$DIR.setup.log" >&2; rm -f "$DIR.setup.log"
    echo "fuzz: meson setup failed" >&2
    exit 1
  fi
  mv -f "$DIR.setup.log" "$DIR/meson-logs/setup-output.log"
  echo "$want" >"$stamp"
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
cleanup() {
  if [[ -n $FZ_PID ]] && kill -0 "$FZ_PID" 2>/dev/null; then
    kill -TERM "$FZ_PID" 2>/dev/null; wait "$FZ_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

bad=0
for t in "${TARGETS[@]}"; do
  exe="$DIR/tests/fuzz/fuzz_$t"
  seeds="tests/fuzz/corpus/$t"
  work="$TMP/$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  [[ -d $seeds ]] && cp -R "$seeds/." "$work/corpus/"
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
    continue
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
done
exit "$bad"
