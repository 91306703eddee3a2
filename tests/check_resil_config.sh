#!/usr/bin/env bash
# resil-config, the built tool, as a user runs it before deploying (README,
# "Configuration"; tools/resil-config.c): exit 0 and the effective
# configuration with secrets redacted and its hash; exit 1 naming every bad
# variable; exit 2 on a bad option; --json; a FILE argument and
# RESIL_CONFIG_FILE, the environment winning. Prints TAP.
# usage: check_resil_config.sh RESIL_CONFIG_BINARY [KIND_NOT_BUILT...]
# (the secret cases need the redis and pg kinds; a build without them runs
# the others).
set -u
tool=$1
shift
have_secret_kinds=1
for k in "$@"; do
  case $k in redis|pg) have_secret_kinds=0 ;; esac
done
PY=$(command -v python3 || true)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

n=0 bad=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() {
  n=$((n + 1)); bad=1; echo "not ok $n - $1"
  shift
  local l
  for l in "$@"; do printf '%s\n' "$l" | sed 's/^/# /'; done
}
# run ARGS...: the tool with only the environment in ENVV (an array), stdout
# in $tmp/out, stderr in $tmp/err, exit status in $rc.
run() {
  rc=0
  env -i "PATH=/usr/bin:/bin" "${ENVV[@]}" "$tool" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
}
has() { grep -qF -- "$2" "$tmp/$1"; }
hash_of() { sed -n 's/^# config_hash=\([0-9a-f]\{16\}\)$/\1/p' "$tmp/out"; }

R_SECRET=rEdIs-cOnFiG-5ec7 P_SECRET=pG-cOnFiG-9a41
if ((have_secret_kinds)); then
  echo "1..10"
  GOOD=(RESIL_DEPS=cache:redis,db:pg,jobs RESIL_SERVICE=checkout
        RESIL_DEP_CACHE_TIMEOUT_MS=250ms "RESIL_DEP_CACHE_PASSWORD=$R_SECRET"
        "RESIL_DEP_DB_CONNINFO=host=127.0.0.1 dbname=x user=u password=$P_SECRET"
        RESIL_DEP_JOBS_BREAKER_OPEN_MS=2s)
else
  echo "1..8"
  GOOD=(RESIL_DEPS=jobs,feed RESIL_SERVICE=checkout RESIL_DEP_FEED_TIMEOUT_MS=250ms
        RESIL_DEP_JOBS_BREAKER_OPEN_MS=2s)
fi

# 1. A valid configuration: exit 0, every effective value, the hash last.
ENVV=("${GOOD[@]}")
run
h1=$(hash_of)
if ((rc == 0)) && [[ ! -s $tmp/err && -n $h1 ]] && has out "RESIL_SERVICE=checkout" &&
   has out "RESIL_DEP_JOBS_BREAKER_OPEN_MS=2000" &&
   has out "RESIL_DEP_JOBS_TIMEOUT_MS=1000" &&   # a default, printed too
   [[ $(tail -n 1 "$tmp/out") == "# config_hash=$h1" ]]; then
  ok "a valid configuration exits 0 and prints every effective value and its hash"
else
  notok "a valid configuration exits 0 and prints every effective value and its hash" \
    "exit $rc" "$(head -c 2000 "$tmp/out")" "$(cat "$tmp/err")"
fi

# 2. The hash is stable, and changes with a value.
run
h2=$(hash_of)
ENVV=("${GOOD[@]}" RESIL_DEP_JOBS_BREAKER_OPEN_MS=3s)
run
h3=$(hash_of)
if [[ -n $h1 && $h1 == "$h2" && -n $h3 && $h3 != "$h1" ]]; then
  ok "the hash is stable and changes when a value changes"
else
  notok "the hash is stable and changes when a value changes" "hashes '$h1' '$h2' '$h3'"
fi

# 3. --json: the same configuration as JSON, same hash.
ENVV=("${GOOD[@]}")
run --json
json_ok=0
if ((rc == 0)) && [[ -n $PY ]] && "$PY" - "$tmp/out" "$h1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["hash"] == sys.argv[2], (d["hash"], sys.argv[2])
assert d["service"]["service"] == "checkout"
assert any(x["name"] == "jobs" for x in d["dependencies"])
EOF
then json_ok=1; fi
if ((json_ok)); then
  ok "--json prints the configuration as JSON with the same hash"
else
  notok "--json prints the configuration as JSON with the same hash" "exit $rc" \
    "$(head -c 1000 "$tmp/out")" "$(cat "$tmp/err")"
fi

# 4. Invalid: exit 1, nothing on stdout, every bad variable named.
ENVV=(RESIL_DEPS=jobs,feed RESIL_DEP_JOBS_TIMEOUT_MS=5q RESIL_DEP_FEED_BREAKER_OPEN_MSS=1s
      RESIL_DEP_JOBS_LIMIT_MAX_CONCURRENT=0)
run
if ((rc == 1)) && [[ ! -s $tmp/out ]] && has err "RESIL_DEP_JOBS_TIMEOUT_MS: '5q' is not a duration" &&
   has err "RESIL_DEP_FEED_BREAKER_OPEN_MSS" && has err "did you mean RESIL_DEP_FEED_BREAKER_OPEN_MS" &&
   has err "RESIL_DEP_JOBS_LIMIT_MAX_CONCURRENT"; then
  ok "an invalid configuration exits 1 naming every bad variable"
else
  notok "an invalid configuration exits 1 naming every bad variable" "exit $rc" \
    "stdout: $(head -c 500 "$tmp/out")" "stderr: $(cat "$tmp/err")"
fi

# 5. A file (argument, or RESIL_CONFIG_FILE) is read; the environment wins.
printf 'RESIL_DEPS=jobs\nRESIL_SERVICE=from-file\nRESIL_DEP_JOBS_TIMEOUT_MS=700\n' >"$tmp/cfg"
ENVV=(RESIL_DEP_JOBS_TIMEOUT_MS=900)
run "$tmp/cfg"
a_rc=$rc a_ok=0
has out "RESIL_SERVICE=from-file" && has out "RESIL_DEP_JOBS_TIMEOUT_MS=900" && a_ok=1
ENVV=("RESIL_CONFIG_FILE=$tmp/cfg" RESIL_SERVICE=from-env)
run
if ((a_rc == 0 && a_ok && rc == 0)) && has out "RESIL_SERVICE=from-env" &&
   has out "RESIL_DEP_JOBS_TIMEOUT_MS=700"; then
  ok "a configuration file is read (argument or RESIL_CONFIG_FILE) and the environment wins"
else
  notok "a configuration file is read (argument or RESIL_CONFIG_FILE) and the environment wins" \
    "exits $a_rc/$rc" "$(head -c 1500 "$tmp/out")" "$(cat "$tmp/err")"
fi

# 6. A bad option: exit 2, named.
ENVV=()
run --frobnicate
if ((rc == 2)) && has err "--frobnicate"; then
  ok "an unknown option exits 2 naming it"
else
  notok "an unknown option exits 2 naming it" "exit $rc" "$(cat "$tmp/err")"
fi

# 7. --keys: the reference, exit 0.
run --keys
if ((rc == 0)) && has out '`RESIL_DEPS`' && has out '### Kind `core`'; then
  ok "--keys prints the key reference"
else
  notok "--keys prints the key reference" "exit $rc" "$(head -c 500 "$tmp/out")"
fi

if ((have_secret_kinds)); then
  # 8. Secrets are redacted in the text dump and the JSON.
  ENVV=("${GOOD[@]}")
  run
  t_rc=$rc
  cp "$tmp/out" "$tmp/text"
  run --json
  if ((t_rc == 0 && rc == 0)) && ! grep -qF -e "$R_SECRET" -e "$P_SECRET" "$tmp/text" "$tmp/out" &&
     grep -qx "RESIL_DEP_CACHE_PASSWORD=<redacted>" "$tmp/text" &&
     grep -qx "RESIL_DEP_DB_CONNINFO=<redacted>" "$tmp/text" && has out "<redacted>"; then
    ok "secrets (Redis password, PostgreSQL conninfo) are redacted in the dump and the JSON"
  else
    notok "secrets (Redis password, PostgreSQL conninfo) are redacted in the dump and the JSON" \
      "exits $t_rc/$rc" "$(grep -e PASSWORD -e CONNINFO "$tmp/text")" "$(head -c 3000 "$tmp/out")"
  fi

  # 9. A secret in an invalid configuration is not echoed in the errors.
  ENVV=(RESIL_DEPS=cache:redis,db:pg "RESIL_DEP_DB_CONNINFO=host=x password='$P_SECRET"
        "RESIL_DEP_CACHE_PASSWORD=$R_SECRET" RESIL_DEP_CACHE_TIMEOUT_MS=0)
  run
  if ((rc == 1)) && has err "RESIL_DEP_DB_CONNINFO" && has err "RESIL_DEP_CACHE_TIMEOUT_MS" &&
     ! grep -qF -e "$R_SECRET" -e "$P_SECRET" "$tmp/out" "$tmp/err"; then
    ok "errors name the variables of a bad configuration but never echo its secrets"
  else
    notok "errors name the variables of a bad configuration but never echo its secrets" \
      "exit $rc" "$(cat "$tmp/out" "$tmp/err")"
  fi
fi

# Last. The worst-case memory per dependency and in total (README "Sizing an
# ECS task's memory"): a dependency's figure grows with its reply cap times
# its pool size (Redis: 2 x max_reply_bytes per connection), and the total
# is the sum.
mem_of() { sed -n "s/^# memory_bound $1=\([0-9]*\) .*/\1/p" "$tmp/out"; }
total_of() { sed -n 's/^# memory_bound_total=\([0-9]*\) .*/\1/p' "$tmp/out"; }
if ((have_secret_kinds)); then
  ENVV=("${GOOD[@]}" RESIL_DEP_CACHE_POOL_MAX_SIZE=4 RESIL_DEP_CACHE_MAX_REPLY_BYTES=1M)
  run
  m1=$(mem_of cache) j1=$(mem_of jobs) d1=$(mem_of db) t1=$(total_of)
  ENVV=("${GOOD[@]}" RESIL_DEP_CACHE_POOL_MAX_SIZE=4 RESIL_DEP_CACHE_MAX_REPLY_BYTES=2M)
  run
  m2=$(mem_of cache)
  if [[ -n $m1 && -n $m2 && -n $j1 && -n $d1 && -n $t1 ]] &&
     ((m2 - m1 == 4 * 2 * 1048576 && t1 == m1 + j1 + d1 && j1 > 0)); then
    ok "resil-config prints each dependency's worst-case memory and the total"
  else
    notok "resil-config prints each dependency's worst-case memory and the total" \
      "cache $m1 -> $m2, jobs $j1, db $d1, total $t1" "$(grep memory_bound "$tmp/out")"
  fi
else
  ENVV=("${GOOD[@]}")
  run
  j1=$(mem_of jobs) f1=$(mem_of feed) t1=$(total_of)
  if [[ -n $j1 && -n $f1 && -n $t1 ]] && ((t1 == j1 + f1 && j1 > 0)); then
    ok "resil-config prints each dependency's worst-case memory and the total"
  else
    notok "resil-config prints each dependency's worst-case memory and the total" \
      "$(grep memory_bound "$tmp/out")"
  fi
fi
exit "$bad"
