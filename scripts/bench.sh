#!/usr/bin/env bash
# scripts/bench.sh — run every benchmark and print one table.
#
#   bash scripts/bench.sh            about 3 minutes after the build
#   bash scripts/bench.sh --quick    fewer runs (about 1 minute): a smoke check
#
# Steps: install missing Debian packages (scripts/lib/packages.sh); configure
# and build build-bench/ (buildtype=release, tests off) with the benchmark
# programs, testhttpd and the brownout demo; start throwaway Redis,
# PostgreSQL and pgbouncer on free loopback ports exactly as scripts/test.sh
# does (scripts/lib/servers.sh); run
#   bench_core    resil admit/done and rejections vs a one-mutex breaker, pool
#                 acquire/release vs a mutex free list, metrics render (100 deps);
#                 then its call-path rows again with the other clock forced
#                 (RESIL_CLOCK=portable if the default read the TSC, else tsc),
#                 so both clock paths are in the table, each row named
#                 name@clock (tsc or clock_gettime)
#   bench_redis   GET through resil-redis vs raw hiredis (same server, same run;
#                 8 threads: the raw connections in a mutex+condvar pool,
#                 bench/rawpool.h)
#   bench_pg      SELECT 1 through resil-pg vs raw libpq PQexecParams (8 threads:
#                 the same raw pool)
#   bench_http    GET through resil-http vs a raw libcurl easy handle (testhttpd)
#   brownout      the brownout scenario with vs without resil (--quick, 5 runs)
# printing each program's own output, then one combined table built from the
# machine-readable SUMMARY lines the programs print with --summary, and the
# machine description. The servers are stopped at the end, also on error or
# Ctrl-C. All traffic is on 127.0.0.1. Every figure is a median over the
# runs, with [min max]; ratios are resil/raw of medians from the same run.
# bench_core runs without RESIL_CLOCK unless the environment sets it (the
# second pass always forces the other clock).
# Logs: build-bench/bench-logs/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source-path=SCRIPTDIR/..
. scripts/lib/packages.sh
. scripts/lib/servers.sh

BUILD=build-bench
LOGS=$BUILD/bench-logs
# What the build, the servers and this script need (a subset of
# RESIL_DEBIAN_PACKAGES: no sanitizer runtime, cmocka or promtool).
BENCH_PACKAGES=(build-essential meson ninja-build pkg-config
  libhiredis-dev libpq-dev libcurl4-openssl-dev
  redis-server postgresql postgresql-client pgbouncer
  procps iproute2 util-linux python3-minimal)

QUICK=0
CHILD=
LOAD_BEFORE='?'
LOAD_PID=

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

say() { printf '\n==> %s\n' "$*"; }

on_exit() {
  local rc=$?
  set +e
  stop_load_sampler
  if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
  stop_all_servers
  exit "$rc"
}

# run_logged [--table-only] LOG CMD...: run CMD (stdout line-buffered) into
# LOG; print LOG without its SUMMARY lines (--table-only: only the brownout
# table's rows). It runs in the background while this shell waits, so a
# signal to the script is handled at once (on_exit stops CMD).
run_logged() {
  local only=0 rc=0
  if [[ $1 == --table-only ]]; then only=1; shift; fi
  local log=$1
  shift
  stdbuf -oL "$@" >"$log" 2>&1 &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  if ((only)); then
    awk '/^phase +side/ {on = 1} on && /^$/ {exit} on' "$log"
  else
    grep -v '^SUMMARY' "$log" || true
  fi
  if ((rc != 0)); then echo "(exited with status $rc)"; fi
  return 0
}

configure() {
  local stamp="$BUILD/.resil-bench-setup" want
  local opts=(--buildtype=release -Dtests=disabled)
  want="meson setup ${opts[*]}"
  if [[ -f $BUILD/build.ninja && -f $stamp && $(<"$stamp") == "$want" ]]; then return 0; fi
  rm -rf "$BUILD"
  if ! meson setup "$BUILD" "${opts[@]}" >"$BUILD.setup.log" 2>&1; then
    cat "$BUILD.setup.log" >&2
    rm -f "$BUILD.setup.log"
    return 1
  fi
  mv -f "$BUILD.setup.log" "$BUILD/meson-logs/setup-output.log"
  echo "$want" >"$stamp"
}

build() {
  local log="$BUILD/meson-logs/bench-compile.log" t
  local targets=(bench/bench_core examples/brownout)
  for t in bench/bench_redis bench/bench_pg bench/bench_http tools/testhttpd; do
    # adapters whose driver library is missing are not configured
    if ninja -C "$BUILD" -t query "$t" >/dev/null 2>&1; then targets+=("$t"); fi
  done
  if ! ninja -C "$BUILD" "${targets[@]}" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    return 1
  fi
  local nw
  nw=$(grep -c 'warning:' "$log" || true)
  if ((nw)); then
    echo "compiler warnings ($nw):"
    grep -A3 'warning:' "$log" | head -n 40
  fi
}

# The 1-minute load average every 5 s while the benchmarks run (other jobs
# on a shared machine move every figure): $LOGS/load.log.
start_load_sampler() {
  (while :; do cut -d' ' -f1 /proc/loadavg; sleep 5; done) >"$LOGS/load.log" 2>/dev/null &
  LOAD_PID=$!
}

stop_load_sampler() {
  if [[ -n $LOAD_PID ]]; then
    kill "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true # its status is the signal's
    LOAD_PID=
  fi
  return 0
}

# "min X, median Y, max Z over N samples" of $LOGS/load.log.
load_during() {
  sort -n "$LOGS/load.log" 2>/dev/null | awk '{v[NR] = $1}
    END { if (NR) printf "min %s, median %s, max %s (%d samples, every 5 s)", v[1], v[int((NR + 1) / 2)], v[NR], NR; else printf "?" }'
}

describe_machine() {
  local cpu os
  cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n1)
  [[ -n $cpu ]] || cpu=$(uname -m)
  # shellcheck disable=SC1091
  os=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}")
  echo "machine: $(nproc) CPUs ($(nproc --all) online), ${cpu}"
  echo "clock:   clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)" \
    "(available: $(xargs </sys/devices/system/clocksource/clocksource0/available_clocksource 2>/dev/null || echo unknown));" \
    "CPU flags: $(grep -m1 -o -w -E 'constant_tsc|nonstop_tsc|tsc_known_freq|tsc_reliable' /proc/cpuinfo 2>/dev/null | sort -u | xargs || true)"
  echo "         $(uname -sr) $(uname -m)${os:+, $os}; $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
  echo "         gcc $(gcc -dumpfullversion 2>/dev/null || echo '?'), buildtype=release;" \
    "libcurl $(pkg-config --modversion libcurl 2>/dev/null || echo -)," \
    "hiredis $(pkg-config --modversion hiredis 2>/dev/null || echo -)," \
    "libpq $(pkg-config --modversion libpq 2>/dev/null || echo -)," \
    "$(redis-server --version 2>/dev/null | awk '{print "redis " substr($3, 3)}')," \
    "PostgreSQL $("$RESIL_TEST_PG_BIN/postgres" --version 2>/dev/null | awk '{print $3}')"
  echo "load:    1-min load average $LOAD_BEFORE before the benchmarks, $(cut -d' ' -f1 /proc/loadavg) after;"
  echo "         during them: $(load_during)"
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# The combined table, from the SUMMARY lines of every log.
print_table() {
  local what=$1
  echo
  echo "resil $(sed -n "s/^ *version : '\(.*\)',/\1/p" meson.build | head -n1) benchmarks ($what)"
  echo
  local f logs=()
  for f in core core-other redis pg http; do [[ -f $LOGS/$f.log ]] && logs+=("$LOGS/$f.log"); done
  cat "${logs[@]}" | grep '^SUMMARY ' | awk '
    function raw_is(name) {
      if (name ~ /^core\.pool/) return "mutex free list";
      if (name ~ /^core\.admit_done_ratelimit/) return "resil, rate limit off";
      if (name ~ /^core\.admit_done_limit1_queue/) return "one-mutex breaker (rejects)";
      if (name ~ /^core\.render/) return "?";
      if (name ~ /^core\.admit_done_ratelimit/) return "resil, rate limit off";
      if (name ~ /^core\./) return "one-mutex breaker";
      if (name ~ /^redis\..*8threads/) return "hiredis, mutex+condvar pool";
      if (name ~ /^redis\./) return "hiredis redisCommand";
      if (name ~ /^pg\..*8threads/) return "PQexecParams, mutex+condvar pool";
      if (name ~ /^pg\./) return "libpq PQexecParams";
      if (name ~ /client_cpu/) return "libcurl easy handle (CPU)";
      if (name ~ /^http\./) return "libcurl easy handle";
      return "?";
    }
    function num(x) {
      if (x == "-") return "-";
      return (x + 0 < 1000) ? sprintf("%.1f", x) : sprintf("%.0f", x);
    }
    function range(a, b) { return (a == "-") ? "" : "[" num(a) " " num(b) "]"; }
    BEGIN {
      printf "| %-51s | %11s | %-17s | %11s | %-17s | %6s | %-32s |\n", "benchmark", "resil ns/op", "[min max]", "raw ns/op", "[min max]", "ratio", "raw =";
      printf "|%s|%s|%s|%s|%s|%s|%s|\n", "-----------------------------------------------------", "------------:", "-------------------", "------------:", "-------------------", "-------:", "----------------------------------";
    }
    {
      if (raw_is($2) == "?" || $4 == "-") rawname = "(no baseline)"; else rawname = raw_is($2);
      printf "| %-51s | %11s | %-17s | %11s | %-17s | %6s | %-32s |\n", $2, num($3), range($6, $7), num($4), range($8, $9), ($5 == "-" ? "-" : sprintf("%.3f", $5)), rawname;
    }'
  local ck1 ck2 ksrc
  ck1=$(awk '/^SUMMARY-CLOCK / {print $2}' "$LOGS/core.log" 2>/dev/null || true)
  ck2=$(awk '/^SUMMARY-CLOCK / {print $2}' "$LOGS/core-other.log" 2>/dev/null || true)
  ksrc=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)
  echo "core rows name@clock: the clock resil's call path read (tsc: extrapolated TSC;"
  echo "clock_gettime: the vDSO or a system call): ${ck1:-?} by default (RESIL_CLOCK unset), ${ck2:-?} in"
  echo "the second pass (the other clock forced); kernel clocksource ${ksrc}."
  echo "The raw baselines read clock_gettime twice per admit+done whatever the clock."
  echo "ns/op: median over the runs [min max]; ratio: resil median / raw median, measured in the"
  echo "same run. core: wall ns/op for the whole loop across threads (render rows: ns per render"
  echo "of every registered dependency, 100+); redis/pg 8 threads: wall time / total operations"
  echo "(inverse throughput); http client_cpu: the calling thread's CPU time per request."

  local files=("$LOGS"/brownout-*.log)
  [[ -e ${files[0]} ]] || return 0
  echo
  echo "| brownout scenario (--quick: 6 phases, about 16 s, 16 workers, 800 req/s per side), ${#files[@]} runs | with resil | without (naive) |"
  echo "|---|---|---|"
  cat "${files[@]}" | grep '^SUMMARY-BROWNOUT ' | "$PY" -c '
import sys, statistics
order, vals = [], {}
for line in sys.stdin:
    _, name, r, n = line.split()[:4]
    if name not in vals:
        order.append(name)
        vals[name] = ([], [])
    vals[name][0].append(r)
    vals[name][1].append(n)
def cell(xs):
    nums = [float(x) for x in xs if x != "never"]
    if not nums:
        return "never"
    s = "%g" % statistics.median(nums)
    if len(nums) > 1:
        s += " [%g %g]" % (min(nums), max(nums))
    if len(nums) < len(xs):
        s += " (never in %d runs)" % (len(xs) - len(nums))
    return s
labels = {
    "brownout.completed_req_s": "brownout: calls completed per s (800 offered)",
    "brownout.p99_ms": "brownout: p99 latency of calls, ms",
    "brownout.max_ms": "brownout: slowest call, ms",
    "brownout.first_fast_rejection_ms": "brownout: time to first fast (local) rejection, ms",
    "brownout.threads_stuck_at_end": "brownout: worker threads stuck (>1 s in a call) at its end, of 16",
    "saturated.goodput_req_s": "saturated: successes per s (adaptive limit vs naive)",
    "saturated.p99_ms": "saturated: p99 latency of calls, ms",
    "partial.successes": "partial (60% errors): successes",
    "partial.requests_sent": "partial (60% errors): requests sent",
    "errors.requests_sent": "outage: requests sent to the failing dependency",
    "recovery.heal_to_last_rejection_ms": "recovery: heal to the last local rejection, ms",
    "recovery.ok_pct": "recovery: calls that succeeded, %",
}
for name in order:
    r, n = vals[name]
    print("| %s | %s | %s |" % (labels.get(name, name), cell(r), cell(n)))
'
  echo "median [min max] over the runs; the dependency is a real HTTP server inside the demo"
  echo "(resil-http with a 200 ms deadline vs a libcurl easy handle with CURLOPT_TIMEOUT 30 s)."
}

main() {
  while (($#)); do
    case $1 in
      --quick) QUICK=1 ;;
      -h | --help) usage; exit 0 ;;
      *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
  local core_runs=9 redis_runs=9 redis_iters=30000 pg_runs=9 pg_ops=5000
  local http_runs=9 http_iters=5000 bo_runs=5
  if ((QUICK)); then
    core_runs=3 redis_runs=3 redis_iters=5000 pg_runs=3 pg_ops=1000
    http_runs=3 http_iters=1000 bo_runs=1
  fi

  local t0=$SECONDS
  ensure_packages "${BENCH_PACKAGES[@]}"
  if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; else PY=$(command -v python3); fi

  say "configuring and building $BUILD/ (release)"
  configure
  build
  rm -rf "$LOGS"
  mkdir -p "$LOGS"

  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/resil-bench.XXXXXX")
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  say "starting servers under $root"
  local have_servers=1
  if start_all_servers "$root"; then
    echo "    redis :$RESIL_TEST_REDIS_PORT  postgres :$RESIL_TEST_PG_PORT  (127.0.0.1)"
  else
    echo "warning: the servers did not start; the Redis and PostgreSQL benchmarks are skipped" >&2
    have_servers=0
  fi
  local tb=$SECONDS
  LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
  start_load_sampler

  say "bench_core --runs $core_runs"
  run_logged "$LOGS/core.log" "$BUILD/bench/bench_core" --runs "$core_runs" --summary
  local other=tsc
  if grep -q '^SUMMARY-CLOCK tsc ' "$LOGS/core.log"; then other=portable; fi
  say "bench_core --runs $core_runs --call-path-only, RESIL_CLOCK=$other"
  run_logged "$LOGS/core-other.log" env RESIL_CLOCK="$other" "$BUILD/bench/bench_core" \
    --runs "$core_runs" --call-path-only --summary

  if [[ -x $BUILD/bench/bench_redis ]] && ((have_servers)); then
    say "bench_redis --runs $redis_runs --iters $redis_iters"
    run_logged "$LOGS/redis.log" "$BUILD/bench/bench_redis" --port "$RESIL_TEST_REDIS_PORT" \
      --runs "$redis_runs" --iters "$redis_iters" --summary
  else
    say "bench_redis: skipped (no hiredis or no server)"
  fi

  if [[ -x $BUILD/bench/bench_pg ]] && ((have_servers)); then
    say "bench_pg --runs $pg_runs --ops $pg_ops"
    run_logged "$LOGS/pg.log" "$BUILD/bench/bench_pg" --runs "$pg_runs" --ops "$pg_ops" \
      --summary "$RESIL_TEST_PG_CONNINFO"
  else
    say "bench_pg: skipped (no libpq or no server)"
  fi

  if [[ -x $BUILD/bench/bench_http ]]; then
    say "bench_http --runs $http_runs --iters $http_iters"
    run_logged "$LOGS/http.log" "$BUILD/bench/bench_http" --testhttpd "$BUILD/tools/testhttpd" \
      --runs "$http_runs" --iters "$http_iters" --summary
  else
    say "bench_http: skipped (no libcurl)"
  fi

  local i
  for ((i = 1; i <= bo_runs; i++)); do
    say "brownout --quick, run $i of $bo_runs"
    # the whole report once; then only the table (the logs have everything)
    local only=()
    ((i == 1)) || only=(--table-only)
    run_logged "${only[@]}" "$LOGS/brownout-$i.log" "$BUILD/examples/brownout" --quick \
      --summary --out-dir "$root/brownout-$i"
  done

  local tbench=$((SECONDS - tb))
  stop_load_sampler
  stop_all_servers
  say "summary"
  print_table "benchmarks took ${tbench} s; $((SECONDS - t0)) s in all"
  echo
  describe_machine
}

main "$@"
