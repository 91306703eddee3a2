#!/usr/bin/env bash
# The demo's --with-servers section (meson test brownout-servers, TAP, one
# case). It starts its own throwaway servers with scripts/lib/servers.sh -
# never the test run's, which other tests use at the same time: the section
# stalls them with SIGSTOP and demotes a writer - runs the demo with
# --phase-seconds 1 --with-servers, and checks that it printed the stalled
# and failover tables of each adapter built, that resil's writes recovered
# on the new writer in each failover and that the naive client's did not.
# Without redis-server, PostgreSQL 15 or pgbouncer installed it checks that
# the section says what it skips.
#
#   servers_test.sh BROWNOUT SERVERS_LIB OUT_DIR [redis] [pg]   (the adapters built)
set -uo pipefail
brownout=$1 lib=$2 out=$3
shift 3
built=" $* "
echo "1..1"
fail() { echo "not ok 1 - brownout-servers: $*"; exit 1; }
mkdir -p "$out" || fail "cannot create $out"
log=$out/brownout.log
unset "${!RESIL_TEST_@}" # not the test run's servers
have=1
for exe in redis-server pgbouncer /usr/lib/postgresql/15/bin/postgres; do
  command -v "$exe" >/dev/null || have=0
done
if ((have)); then
  # shellcheck source=../scripts/lib/servers.sh
  . "$lib"
  root=$(mktemp -d /tmp/brownout-servers.XXXXXX) || fail "mktemp"
  trap 'stop_all_servers' EXIT
  start_all_servers "$root" >"$out/servers.log" 2>&1 || fail "servers.sh: $(tail -5 "$out/servers.log")"
fi
"$brownout" --phase-seconds 1 --with-servers --out-dir "$out" >"$log" 2>&1 ||
  fail "the demo failed (exit $?): see $log"
sed -n '/^---- --with-servers/,$p' "$log"
if ((!have)); then
  grep -q 'skipped' "$log" || fail "no servers, yet the section says nothing is skipped"
  echo "ok 1 - brownout-servers (no servers installed: skipped with a note)"
  exit 0
fi
n=0
for kind in redis pg; do
  [[ $built == *" $kind "* ]] || continue
  n=$((n + 1))
done
stalled=$(grep -c '^  resumed  resil ' "$log")
failovers=$(grep -c '^  failover resil ' "$log")
((stalled == n && failovers == n)) ||
  fail "expected $n stalled and $n failover tables, got $stalled and $failovers"
grep -E '^  failover resil .* (never|no refusal)$' "$log" && fail "resil's writes did not recover"
naive_never=$(awk '/^  failover resil /{getline; print}' "$log" | grep -c ' never$')
((naive_never == n)) ||
  fail "the naive client's writes recovered (its connection stays on the demoted writer)"
echo "ok 1 - brownout-servers ($n adapter(s): stalled, failed over)"
