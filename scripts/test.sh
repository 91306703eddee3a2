#!/usr/bin/env bash
# scripts/test.sh — build resil four ways and run every test suite against
# throwaway servers. This is what CI runs (through .ci/run).
#
#   bash scripts/test.sh                 plain, core-only, ASan/UBSan and TSan
#                                        builds, and fuzz
#   bash scripts/test.sh --quick         plain build only (no fuzz)
#   bash scripts/test.sh --suite unit    only that meson suite (repeatable: unit,
#                                        integration, examples, tools, ops; soak
#                                        and fuzz name those steps)
#   bash scripts/test.sh --build tsan    only that build (repeatable; fuzz too)
#
# Steps: install missing Debian packages (scripts/lib/packages.sh); start
# Redis (x2), PostgreSQL and pgbouncer on free loopback ports
# (scripts/lib/servers.sh, which documents the RESIL_TEST_* variables the
# tests get); for each build: configure, compile, `meson test`, then the
# soak (suite 'soak', left out of a plain `meson test`: 20 s plain, 10 s
# under the sanitizers; the ASan and TSan builds run every suite but the
# demo's, `examples`, which runs in the plain build); the pseudo-build `fuzz`
# runs `scripts/fuzz.sh 12` (each libFuzzer target 12 s, one per CPU at a
# time; one test case per target; only without --suite, or with --suite fuzz); stop the servers; print a per-build table
# and, as the very last line,
# "N passed, M failed[, K skipped]" counted over individual test cases
# (scripts/lib/count_tests.py). The build `core` has no adapter
# (-Dredis/pg/http=disabled) and runs the unit and tools suites only.
# The table shows the library's tests and, on a row of their own, the tests
# of the test tools (meson suite 'tools'); the last line counts both.
# Nothing is silently missing: in each build the tests meson configured are
# compared with tests/expected-tests.txt and with the tests that ran, and an
# adapter whose driver is installed must be built
# (scripts/lib/check_manifest.py); each problem is a failure.
# Exits non-zero if any test case or any build failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source-path=SCRIPTDIR/..
. scripts/lib/packages.sh
. scripts/lib/servers.sh

# ------------------------------------------------------------------ builds ---
ALL_BUILDS=(plain core asan tsan fuzz)
SOAK_SECONDS_PLAIN=20   # RESIL_SOAK_SECONDS of the soak step, plain build
SOAK_SECONDS_SAN=10     # and under ASan / TSan
FUZZ_SECONDS=12         # per fuzz target (CI stays well under 15 minutes on a busy machine)

# build_config NAME: set B_DIR, B_CC, B_OPTS (meson setup), B_ENV (meson test
# environment), B_TMULT (timeout multiplier), B_SUITES (the only suites this
# build runs; empty: all), B_SOAK (0: no soak step),
# B_ADAPTERS (1: the adapters whose drivers are installed must be built).
build_config() {
  # -Dinvariants=true: the core's invariant checks (RESIL_INVARIANT in
  # src/internal.h) abort at the change that breaks one; release builds
  # (scripts/bench.sh, users) leave them out.
  B_OPTS=(--buildtype=debugoptimized -Dtests=enabled -Dinvariants=true)
  B_ENV=() B_SUITES=() B_SOAK=1 B_ADAPTERS=1
  case $1 in
    plain)
      # What users ship: gcc at -O3 (buildtype=release), where gcc finds
      # warnings (e.g. maybe-uninitialized) that -O2 does not; warnings fail.
      B_DIR=build-test B_CC=gcc B_TMULT=1
      B_OPTS=(--buildtype=release -Dtests=enabled -Dwerror=true -Dinvariants=true) ;;
    core)
      # The README's promise that the core builds and works alone: no
      # adapter at all; the unit and tools suites (cheap: -O1, no servers).
      B_DIR=build-core B_CC=gcc B_TMULT=1 B_SUITES=(unit tools) B_SOAK=0 B_ADAPTERS=0
      B_OPTS=(--buildtype=debugoptimized -Doptimization=1 -Dtests=enabled -Dwerror=true
              -Dinvariants=true -Dredis=disabled -Dpg=disabled -Dhttp=disabled) ;;
    asan)
      # The library's suites and the soak; the demo (suite examples) runs
      # in the plain build only: it is example code, its library paths are
      # the ones the unit and integration suites run here, and it is the
      # slowest suite (~50 s a build).
      B_DIR=build-asan B_CC=clang B_TMULT=3 B_SUITES=(unit integration tools ops)
      # shellcheck disable=SC2054 # commas are meson's list syntax
      B_OPTS+=(-Db_sanitize=address,undefined -Db_lundef=false -Dc_args=-fno-omit-frame-pointer)
      B_ENV=(ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
             UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1) ;;
    tsan)
      # As asan: no examples suite.
      B_DIR=build-tsan B_CC=clang B_TMULT=3 B_SUITES=(unit integration tools ops)
      B_OPTS+=(-Db_sanitize=thread -Db_lundef=false -Dc_args=-fno-omit-frame-pointer)
      B_ENV=(TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1) ;;
    fuzz)
      # Not a meson test run: scripts/fuzz.sh configures and builds this
      # directory itself (libFuzzer harnesses, the library under ASan+UBSan).
      B_DIR=build-fuzz B_CC=clang B_TMULT=1
      # shellcheck disable=SC2054
      B_OPTS=(-Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false) ;;
    *) echo "unknown build '$1' (have: ${ALL_BUILDS[*]})" >&2; return 1 ;;
  esac
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }

# ------------------------------------------------------------------- state ---
BUILDS=()
SUITES=()               # the names alone
MAIN_SUITE_ARGS=()      # for the main `meson test`: without soak and fuzz
WANT_MAIN=1 WANT_SOAK=1 WANT_FUZZ=1
declare -A R_PASS=() R_FAIL=() R_SKIP=() R_TIME=() R_NOTE=()
declare -A R_TPASS=() R_TFAIL=() R_TSKIP=()   # the tools suite, per build
FAILED_CASES=()
EXTRA_FAILURES=0        # failures outside any build (server start-up)
TSAN_PREFIX=()          # e.g. setarch x86_64 -R, when TSan needs ASLR off
RESTORE_MMAP_RND_BITS=
PY=
CHILD=                  # the long-running command in progress, if any

# run_child CMD...: run CMD and return its status. It runs in the background
# while this shell waits, so that a signal to this script (CI cancelling it)
# is handled at once: on_exit then stops CMD and the servers.
run_child() {
  local rc=0
  "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  return "$rc"
}

parse_args() {
  while (($#)); do
    case $1 in
      --quick) BUILDS=(plain) ;;
      --build) BUILDS+=("${2:?--build needs a name}"); shift ;;
      --build=*) BUILDS+=("${1#*=}") ;;
      --suite) SUITES+=("${2:?--suite needs a name}"); shift ;;
      --suite=*) SUITES+=("${1#*=}") ;;
      -h|--help) usage; exit 0 ;;
      *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
  ((${#BUILDS[@]})) || BUILDS=("${ALL_BUILDS[@]}")
  # The soak and the fuzzers are separate steps: select them by their suite
  # name; other names go to the main `meson test`.
  local s
  if ((${#SUITES[@]})); then
    WANT_MAIN=0 WANT_SOAK=0 WANT_FUZZ=0
    for s in "${SUITES[@]}"; do
      case $s in
        soak) WANT_SOAK=1 ;;
        fuzz) WANT_FUZZ=1 ;;
        *) WANT_MAIN=1; MAIN_SUITE_ARGS+=(--suite "$s") ;;
      esac
    done
  fi
  local b
  for b in "${BUILDS[@]}"; do build_config "$b" || exit 2; done
}

find_python() {
  if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3
  elif command -v python3 >/dev/null; then PY=$(command -v python3)
  else ensure_packages python3-minimal && PY=/usr/bin/python3; fi
}

on_exit() {
  local rc=$?
  set +e
  if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null   # meson test stops its tests on SIGTERM
    wait "$CHILD" 2>/dev/null
  fi
  stop_all_servers
  if [[ -n $RESTORE_MMAP_RND_BITS ]]; then
    sysctl -qw "vm.mmap_rnd_bits=$RESTORE_MMAP_RND_BITS" 2>/dev/null
  fi
  exit "$rc"
}

# ------------------------------------------------------------------- TSan ---
# ThreadSanitizer (clang 14) dies with "unexpected memory mapping" on kernels
# with large mmap ASLR (vm.mmap_rnd_bits > 28). Probe a tiny program; if it
# fails, run the tests with ASLR off (setarch -R), else lower the sysctl.
tsan_setup() {
  local d="$RESIL_TEST_TMPDIR/tsan-probe" arch
  arch=$(uname -m)
  mkdir -p "$d"
  cat >"$d/probe.c" <<'EOF'
#include <pthread.h>
static int n;
static void *run(void *a) { (void)a; __atomic_fetch_add(&n, 1, __ATOMIC_SEQ_CST); return 0; }
int main(void) { pthread_t t; pthread_create(&t, 0, run, 0); pthread_join(t, 0); return n != 1; }
EOF
  if ! clang -fsanitize=thread -g -pthread "$d/probe.c" -o "$d/probe" 2>"$d/cc.log"; then
    echo "tsan: cannot build a ThreadSanitizer program:" >&2; cat "$d/cc.log" >&2
    return 1
  fi
  if "$d/probe" >"$d/run.log" 2>&1; then return 0; fi
  if setarch "$arch" -R "$d/probe" >"$d/run2.log" 2>&1; then
    echo "tsan: needs ASLR off here; running its tests under setarch $arch -R"
    TSAN_PREFIX=(setarch "$arch" -R)
    return 0
  fi
  local old
  old=$(sysctl -n vm.mmap_rnd_bits 2>/dev/null || true)
  if ((EUID == 0)) && [[ -n $old ]] && sysctl -qw vm.mmap_rnd_bits=28 2>/dev/null; then
    RESTORE_MMAP_RND_BITS=$old
    if "$d/probe" >"$d/run3.log" 2>&1; then
      echo "tsan: lowered vm.mmap_rnd_bits from $old to 28 for this run"
      return 0
    fi
  fi
  echo "tsan: ThreadSanitizer programs do not run on this machine:" >&2
  cat "$d/run.log" >&2
  return 1
}

# ----------------------------------------------------------------- a build ---

configure_build() {
  local stamp="$B_DIR/.resil-test-setup" want
  # The C++ header test (tests/cxx) is built with the C compiler's sibling,
  # so that a sanitizer build links one sanitizer runtime.
  local cxx=g++
  [[ $B_CC != clang ]] || cxx=clang++
  want="CC=$B_CC CXX=$cxx meson setup ${B_OPTS[*]}"
  # Reuse a build directory configured the same way (ninja re-runs meson when
  # a meson.build changes); otherwise start it afresh.
  if [[ -f $B_DIR/build.ninja && -f $stamp && $(<"$stamp") == "$want" ]]; then
    return 0
  fi
  rm -rf "$B_DIR"
  CC=$B_CC CXX=$cxx meson setup "$B_DIR" "${B_OPTS[@]}" >"$B_DIR.setup.log" 2>&1 || {
    cat "$B_DIR.setup.log" >&2; rm -f "$B_DIR.setup.log"; return 1; }
  mv -f "$B_DIR.setup.log" "$B_DIR/meson-logs/setup-output.log"
  echo "$want" >"$stamp"
}

compile_build() {
  local log="$B_DIR/meson-logs/compile.log"
  if run_child meson compile -C "$B_DIR" >"$log" 2>&1; then
    grep -i 'warning:' "$log" | head -n 20 || true
    return 0
  fi
  tail -n 150 "$log" >&2
  return 1
}

# count_log LOG NAME RC: add the test cases of a meson test log to NAME's rows
# (R_PASS/R_FAIL/R_SKIP for the library, R_T* for suite 'tools') and
# FAILED_CASES, and the programs that ran to $RESIL_TEST_TMPDIR/ran-NAME;
# RC is meson test's exit status.
count_log() {
  local log=$1 name=$2 rc=$3 counts p f s tp tf ts
  local errf="$RESIL_TEST_TMPDIR/count-$name.err"
  counts=$("$PY" scripts/lib/count_tests.py "$log" "$name" \
    --ran "$RESIL_TEST_TMPDIR/ran-$name" 2>"$errf") || counts="0 1 0 0 0 0"
  read -r p f s tp tf ts <<<"$counts"
  mapfile -t -O "${#FAILED_CASES[@]}" FAILED_CASES <"$errf"
  if ((rc != 0 && f + tf == 0)); then
    f=1
    FAILED_CASES+=("$name: meson test exited $rc with no failing test case in its log")
  fi
  R_PASS[$name]=$((R_PASS[$name] + p)) R_FAIL[$name]=$((R_FAIL[$name] + f))
  R_SKIP[$name]=$((R_SKIP[$name] + s))
  R_TPASS[$name]=$((R_TPASS[$name] + tp)) R_TFAIL[$name]=$((R_TFAIL[$name] + tf))
  R_TSKIP[$name]=$((R_TSKIP[$name] + ts))
}

# installed_adapters: the adapters whose driver is installed (pkg-config), as
# "redis,pg,http" (a subset).
installed_adapters() {
  local found=() a pc
  for a in redis:hiredis pg:libpq http:libcurl; do
    pc=${a#*:}
    pkg-config --exists "$pc" 2>/dev/null && found+=("${a%%:*}")
  done
  local IFS=,
  echo "${found[*]}"
}

# check_manifest NAME SUITES: nothing silently missing from NAME's run (see
# scripts/lib/check_manifest.py): each problem is one failed case.
check_manifest() {
  local name=$1 suites=$2 expect="" line n=0
  ((B_ADAPTERS == 0)) || expect=$(installed_adapters)
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    n=$((n + 1))
    FAILED_CASES+=("$name: missing: $line")
  done < <("$PY" scripts/lib/check_manifest.py "$B_DIR" tests/expected-tests.txt \
             "$expect" "$suites" "$RESIL_TEST_TMPDIR/ran-$name" 2>&1)
  R_FAIL[$name]=$((R_FAIL[$name] + n))
}

# run_fuzz: the pseudo-build `fuzz`: scripts/fuzz.sh FUZZ_SECONDS, one test
# case per target (its lines "fuzz TARGET N runs ok|CRASH|ERROR|MISSING ...")
# and per replay of past findings ("fuzz TARGET/crashes K files ok|CRASH").
run_fuzz() {
  local name=fuzz start=$SECONDS rc=0 line runs res total=0 n=0
  R_PASS[$name]=0 R_FAIL[$name]=0 R_SKIP[$name]=0 R_NOTE[$name]=
  echo
  echo "==> [$name] scripts/fuzz.sh $FUZZ_SECONDS (clang, libFuzzer + ASan/UBSan, build-fuzz)"
  local out="$RESIL_TEST_TMPDIR/fuzz.out"
  run_child bash scripts/fuzz.sh "$FUZZ_SECONDS" >"$out" || rc=$?
  while read -r line; do
    [[ $line == "fuzz "* ]] || continue
    echo "    $line"
    read -r _ _ runs _ res _ <<<"$line"
    n=$((n + 1))
    if [[ $res == ok ]]; then
      R_PASS[$name]=$((R_PASS[$name] + 1))
      # "fuzz TARGET/crashes K files ok": the replay of past findings
      [[ $line == "fuzz "*/crashes* ]] || total=$((total + runs))
    else
      R_FAIL[$name]=$((R_FAIL[$name] + 1))
      FAILED_CASES+=("$name: $line")
    fi
  done <"$out"
  if ((rc != 0 && R_FAIL[$name] == 0)); then
    R_FAIL[$name]=1
    FAILED_CASES+=("$name: scripts/fuzz.sh exited $rc (build failed? see above)")
  fi
  R_NOTE[$name]="$n targets x ${FUZZ_SECONDS}s, $total runs"
  R_TIME[$name]=$((SECONDS - start))
}

# run_soak NAME PREFIX...: the soak suite in this build, RESIL_SOAK_SECONDS
# short; counted into NAME's row.
run_soak() {
  local name=$1 rc=0 secs=$SOAK_SECONDS_SAN
  shift
  [[ $name != plain ]] || secs=$SOAK_SECONDS_PLAIN
  if [[ ! -x $B_DIR/tests/soak/soak ]]; then
    # A failure if its adapters should be there: see check_manifest.
    R_NOTE[$name]+="no soak (an adapter is not built) "
    return 0
  fi
  echo "    soak: ${secs}s"
  local log="$B_DIR/meson-logs/soaklog.json"
  rm -f "$log"
  run_child "$@" env "${B_ENV[@]}" "RESIL_SOAK_SECONDS=$secs" meson test -C "$B_DIR" \
    --no-rebuild --print-errorlogs --logbase soaklog --num-processes 1 \
    --timeout-multiplier "$B_TMULT" --suite soak || rc=$?
  count_log "$log" "$name" "$rc"
  # The summary line of the soak, for the log.
  grep -ho '# soak: calls=[^"]*' "$log" 2>/dev/null | sed 's/\\n.*//; s/^/    /' || true
}

# run_build NAME: configure, compile, test, count. Never exits the script.
run_build() {
  local name=$1 start=$SECONDS rc=0
  if [[ $name == fuzz ]]; then
    run_fuzz
    return 0
  fi
  build_config "$name"
  # Tests may read this to widen timing slack under the sanitizers.
  B_ENV+=("RESIL_TEST_BUILD=$name")
  R_PASS[$name]=0 R_FAIL[$name]=0 R_SKIP[$name]=0 R_NOTE[$name]=
  R_TPASS[$name]=0 R_TFAIL[$name]=0 R_TSKIP[$name]=0
  rm -f "$RESIL_TEST_TMPDIR/ran-$name"
  echo
  echo "==> [$name] $B_CC, ${B_OPTS[*]} ($B_DIR)"

  # The suites of the main `meson test` run: the selection, narrowed to
  # B_SUITES for a build that runs only some.
  local suite_args=("${MAIN_SUITE_ARGS[@]}") want_main=$WANT_MAIN want_soak=$WANT_SOAK
  local ran_suites=all s local_suites=()
  if ((${#MAIN_SUITE_ARGS[@]})); then
    ran_suites=$(printf '%s\n' "${SUITES[@]}" | grep -vx 'soak\|fuzz' | paste -sd, - || true)
  fi
  if ((${#B_SUITES[@]})); then
    ((B_SOAK)) || want_soak=0
    suite_args=()
    for s in "${B_SUITES[@]}"; do
      if ((${#MAIN_SUITE_ARGS[@]} == 0)) || [[ ,$ran_suites, == *",$s,"* ]]; then
        suite_args+=(--suite "$s") local_suites+=("$s")
      fi
    done
    ((${#suite_args[@]})) || want_main=0
    ran_suites=$(IFS=,; echo "${local_suites[*]}")
  fi
  ((want_main)) || ran_suites=

  local prefix=()
  if [[ $name == tsan ]]; then
    if ! tsan_setup; then
      R_FAIL[$name]=1 R_NOTE[$name]="TSan cannot run"; R_TIME[$name]=$((SECONDS - start))
      FAILED_CASES+=("$name: ThreadSanitizer does not run on this machine")
      return 0
    fi
    prefix=("${TSAN_PREFIX[@]}")
  fi

  if ! configure_build; then
    R_FAIL[$name]=1 R_NOTE[$name]="setup failed"; R_TIME[$name]=$((SECONDS - start))
    FAILED_CASES+=("$name: meson setup failed")
    return 0
  fi
  if ! compile_build; then
    R_FAIL[$name]=1 R_NOTE[$name]="build failed"; R_TIME[$name]=$((SECONDS - start))
    FAILED_CASES+=("$name: compile failed (see above, or $B_DIR/meson-logs/compile.log)")
    return 0
  fi

  ensure_servers_healthy || echo "warning: a test server could not be restarted" >&2

  if ((want_main)); then
    local log="$B_DIR/meson-logs/testlog.json"
    rm -f "$log"
    run_child "${prefix[@]}" env "${B_ENV[@]}" meson test -C "$B_DIR" --no-rebuild --print-errorlogs \
      --num-processes 2 --timeout-multiplier "$B_TMULT" "${suite_args[@]}" || rc=$?
    count_log "$log" "$name" "$rc"
  fi
  if ((want_soak)); then
    ensure_servers_healthy || echo "warning: a test server could not be restarted" >&2
    run_soak "$name" "${prefix[@]}"
    ran_suites+=${ran_suites:+,}soak
  fi
  check_manifest "$name" "$ran_suites"
  R_TIME[$name]=$((SECONDS - start))
}

# ------------------------------------------------------------------ report ---

report() {
  local b tp=0 tf=$EXTRA_FAILURES ts=0
  echo
  printf '%-12s %8s %8s %8s %7s  %s\n' build passed failed skipped time note
  for b in "${BUILDS[@]}"; do
    [[ -n ${R_PASS[$b]+x} ]] || continue
    printf '%-12s %8d %8d %8d %6ss  %s\n' "$b" "${R_PASS[$b]}" "${R_FAIL[$b]}" \
      "${R_SKIP[$b]}" "${R_TIME[$b]}" "${R_NOTE[$b]}"
    tp=$((tp + R_PASS[$b])) tf=$((tf + R_FAIL[$b])) ts=$((ts + R_SKIP[$b]))
    [[ -n ${R_TPASS[$b]+x} ]] || continue
    # Tests of the test tools (suite 'tools'), apart from the library's.
    printf '%-12s %8d %8d %8d %7s  %s\n' "  $b tools" "${R_TPASS[$b]}" "${R_TFAIL[$b]}" \
      "${R_TSKIP[$b]}" "" "tests of the test tools"
    tp=$((tp + R_TPASS[$b])) tf=$((tf + R_TFAIL[$b])) ts=$((ts + R_TSKIP[$b]))
  done
  if ((${#FAILED_CASES[@]})); then
    echo
    echo "failures:"
    printf '  %s\n' "${FAILED_CASES[@]}"
  fi
  echo
  local line="$tp passed, $tf failed"
  ((ts == 0)) || line+=", $ts skipped"
  echo "$line"
  ((tf == 0))
}

main() {
  parse_args "$@"
  local t0=$SECONDS
  ensure_packages
  find_python

  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/resil-test.XXXXXX")
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  echo "==> starting test servers under $root"
  if start_all_servers "$root"; then
    echo "    redis :$RESIL_TEST_REDIS_PORT  redis(auth) :$RESIL_TEST_REDIS_AUTH_PORT  postgres :$RESIL_TEST_PG_PORT  pgbouncer :$RESIL_TEST_PGBOUNCER_PORT"
  else
    echo "error: the test servers did not start; integration tests will fail" >&2
    EXTRA_FAILURES=1
    FAILED_CASES+=("servers: start-up failed (see above)")
  fi

  local b
  for b in "${BUILDS[@]}"; do
    if [[ $b == fuzz ]]; then ((WANT_FUZZ)) || continue
    else ((WANT_MAIN || WANT_SOAK)) || continue; fi
    run_build "$b"
  done

  # Stop the servers now, so that nothing is printed after the totals.
  stop_all_servers
  echo
  echo "total time $((SECONDS - t0))s"
  report
}

main "$@"
