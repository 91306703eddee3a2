# shellcheck shell=bash
# Pid lists ($(_srv_pids_in ...)) are split into words on purpose:
# shellcheck disable=SC2046,SC2086
# Throwaway servers for the integration and fault tests, all on 127.0.0.1 on
# free ports, each in its own directory under one temporary root.
#
#   start_all_servers ROOT   start everything, export RESIL_TEST_* (below)
#   stop_all_servers         stop everything, remove ROOT (idempotent; no output)
#   ensure_servers_healthy   restart any server that stopped answering
#
# What the tests get (all exported):
#   RESIL_TEST_TMPDIR                      the temporary root
#   RESIL_TEST_REDIS_PORT / _PID / _RESTART
#   RESIL_TEST_REDIS_AUTH_PORT / _PID / _RESTART, RESIL_TEST_REDIS_PASSWORD
#   RESIL_TEST_PG_PORT / _PID / _RESTART, RESIL_TEST_PG_DATA, RESIL_TEST_PG_BIN,
#   RESIL_TEST_PG_SOCKDIR, RESIL_TEST_PG_PASSWORD,
#   RESIL_TEST_PG_CONNINFO        role resil, password auth (scram-sha-256)
#   RESIL_TEST_PG_ADMIN_CONNINFO  superuser postgres, trusted, same port
#   RESIL_TEST_PGBOUNCER_PORT / _PID / _RESTART, RESIL_TEST_PGBOUNCER_CONNINFO
#   RESIL_TEST_HTTP_PORT          not set yet: see start_http_server
# Failover twins, started only when a test asks (their start scripts are
# idempotent: start if not answering, initdb the first time, print nothing
# on success), each on 127.0.0.2 with the SAME port as its twin on
# 127.0.0.1, so a host name moved between the two addresses (a hosts file:
# RESIL_HOSTS_FILE) moves connections the way a DNS failover does:
#   RESIL_TEST_PG2_START, RESIL_TEST_PG2_ADDR (127.0.0.2; port RESIL_TEST_PG_PORT),
#   RESIL_TEST_PG2_ADMIN_CONNINFO  superuser postgres on pg2 (role resil and
#                                  database resil exist, same password)
#   RESIL_TEST_REDIS2_START, RESIL_TEST_REDIS2_ADDR (127.0.0.2; port RESIL_TEST_REDIS_PORT, no auth)
# and a third Redis for the several-addresses test (test_multi_endpoint: the
# test Redis, redis2 and redis3 behind one dependency):
#   RESIL_TEST_REDIS3_START, RESIL_TEST_REDIS3_ADDR (127.0.0.3; port RESIL_TEST_REDIS_PORT, no auth)
# Their pids are in $RESIL_TEST_TMPDIR/{redis2,redis3,pg2}.pid once started.
# (scripts/test.sh adds RESIL_TEST_BUILD=plain|asan|tsan to each test run.)
#
# Restart scripts ($RESIL_TEST_TMPDIR/restart-*.sh) bring a server back on the
# SAME port whatever state a test left it in (running, SIGSTOPped, killed),
# print nothing on success, exit non-zero with the server's log on failure,
# and rewrite its pid file ($RESIL_TEST_TMPDIR/{redis,redis-auth,pg,pgbouncer}.pid):
# read the new pid from there. The *_PID variables hold the first pid only.
#
# The restart scripts source this file and $RESIL_TEST_TMPDIR/servers.env, so
# starting and restarting are the same code. Nothing here prints on success.

RESIL_PG_VERSION=${RESIL_PG_VERSION:-15}
# Ports are chosen below the kernel's ephemeral range, so that while a test
# has a server down no outgoing connection can take its port as source port
# and stop the restart from binding it.
RESIL_PORT_MIN=${RESIL_PORT_MIN:-15000}
RESIL_PORT_MAX=${RESIL_PORT_MAX:-32000}
RESIL_SERVER_WAIT_S=${RESIL_SERVER_WAIT_S:-30}

# ---------------------------------------------------------------- helpers ---

_srv_err() { echo "servers: $*" >&2; }

# Print the last lines of a log file to stderr (for start failures).
_srv_log_tail() {
  [[ -f $1 ]] || return 0
  echo "---- last lines of $1 ----" >&2
  tail -n 30 "$1" >&2 || true
  echo "----" >&2
}

# A python3 for small helpers (system one first: it is what meson uses).
_srv_python() {
  if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3
  else command -v python3 || true; fi
}

# alloc_ports N: print N distinct free TCP ports on 127.0.0.1, one a line.
alloc_ports() {
  local n=$1 py lo
  lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  local max=$RESIL_PORT_MAX
  ((max < lo)) || max=$((lo - 1))
  py=$(_srv_python)
  if [[ -n $py ]]; then
    "$py" - "$n" "$RESIL_PORT_MIN" "$max" <<'EOF'
import random, socket, sys
n, lo, hi = map(int, sys.argv[1:])
held, ports = [], []
for port in random.sample(range(lo, hi + 1), hi - lo + 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))   # no SO_REUSEADDR: fails on TIME_WAIT too
    except OSError:
        s.close()
        continue
    held.append(s)                    # hold it so the N ports are distinct
    ports.append(port)
    if len(ports) == n:
        break
for s in held:
    s.close()
if len(ports) < n:
    sys.exit("no free ports in %d-%d" % (lo, hi))
print("\n".join(map(str, ports)))
EOF
  else
    # No python: random picks, checked against the listening sockets.
    local got=() p tries=0
    while ((${#got[@]} < n && tries++ < 1000)); do
      p=$((RESIL_PORT_MIN + RANDOM % (max - RESIL_PORT_MIN + 1)))
      [[ " ${got[*]} " == *" $p "* ]] && continue
      [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] || continue
      got+=("$p")
    done
    ((${#got[@]} == n)) || { _srv_err "no free ports"; return 1; }
    printf '%s\n' "${got[@]}"
  fi
}

_srv_random_password() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

# Is PID a live process of this run, i.e. working in our root? Every server
# works in a directory under RESIL_TEST_TMPDIR, so this never touches a system
# service or another run's server. "Live" means any of its threads is: a
# killed multi-threaded server (redis) shows its main thread as a zombie while
# other threads still hold its sockets open.
_srv_ours() {
  local pid=$1 cwd t state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || cwd=$(readlink "/proc/$pid/task/"*/cwd 2>/dev/null | head -n1)
  [[ -n $cwd ]] || return 1
  [[ $cwd == "$RESIL_TEST_TMPDIR" || $cwd == "$RESIL_TEST_TMPDIR"/* ]] || return 1
  for t in "/proc/$pid/task/"*/stat; do
    state=$(sed 's/.*) //' "$t" 2>/dev/null | cut -c1) || continue
    [[ -z $state || $state == [ZX] ]] || return 0
  done
  return 1
}

# Pids of our processes whose working directory is DIR or below it.
_srv_pids_in() {
  local dir=$1 p pid
  # shellcheck disable=SC2044 # /proc paths have no spaces
  for p in $(find /proc/[0-9]*/cwd -maxdepth 0 \( -lname "$dir" -o -lname "$dir/*" \) 2>/dev/null); do
    pid=${p#/proc/}; pid=${pid%/cwd}
    [[ $pid != "$$" && $pid != "$BASHPID" ]] || continue
    _srv_ours "$pid" && echo "$pid"
  done
  return 0
}

# _srv_kill PID...: SIGCONT (a test may have stopped it), SIGTERM, then
# SIGKILL after 3 s; returns once all are gone.
_srv_kill() {
  local pids=() p i
  for p in "$@"; do _srv_ours "$p" && pids+=("$p"); done
  ((${#pids[@]})) || return 0
  kill -CONT "${pids[@]}" 2>/dev/null || true
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    local alive=()
    for p in "${pids[@]}"; do _srv_ours "$p" && alive+=("$p"); done
    ((${#alive[@]})) || return 0
    ((i == 30)) && kill -KILL "${alive[@]}" 2>/dev/null
    sleep 0.1
  done
  _srv_err "could not stop pids ${pids[*]}"
  return 1
}

_srv_read_pid() { if [[ -f $1 ]]; then head -n1 "$1" 2>/dev/null || true; fi; }

# Atomically write a pid file (tests may read it at any moment).
_srv_write_pid() { echo "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; }

# Can we open a TCP connection to 127.0.0.1:PORT?
_srv_tcp_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# Run a command as the PostgreSQL OS user (PostgreSQL and pgbouncer refuse
# root), from a directory that user can read.
_srv_as_pg() {
  if ((EUID == 0)); then
    (cd "$RESIL_TEST_TMPDIR" && runuser -u postgres -- "$@")
  else
    (cd "$RESIL_TEST_TMPDIR" && "$@")
  fi
}

# Prefix that execs a long-running command as the PostgreSQL OS user (setpriv
# execs in place, so the pid we start is the server's pid).
_srv_pg_exec_prefix() {
  if ((EUID == 0)); then
    SRV_PG_EXEC=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  else
    SRV_PG_EXEC=()
  fi
}

# Directory owned by the PostgreSQL OS user.
_srv_pg_mkdir() {
  mkdir -p "$@"
  ((EUID != 0)) || chown postgres:postgres "$@"
  chmod 700 "$@"
}

# Clear what a test run's environment could leak into a server.
_srv_clean_env() {
  unset MALLOC_PERTURB_ ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS LSAN_OPTIONS \
    LD_PRELOAD CMOCKA_MESSAGE_OUTPUT CMOCKA_TEST_ABORT
}

# ------------------------------------------------------------------ redis ---
# Two instances: "redis" (no auth) and "redis-auth" (requirepass); and on
# demand "redis2" (no auth) on 127.0.0.2 with redis's port (failover twin)
# and "redis3" (no auth) on 127.0.0.3, same port (several addresses).

_redis_port() { if [[ $1 == redis-auth ]]; then echo "$RESIL_TEST_REDIS_AUTH_PORT"; else echo "$RESIL_TEST_REDIS_PORT"; fi; }
_redis_pass() { if [[ $1 == redis-auth ]]; then echo "$RESIL_TEST_REDIS_PASSWORD"; fi; }
_redis_host() {
  case $1 in
    redis2) echo "$RESIL_TEST_REDIS2_ADDR" ;;
    redis3) echo "$RESIL_TEST_REDIS3_ADDR" ;;
    *) echo 127.0.0.1 ;;
  esac
}

_redis_cli() {
  local name=$1; shift
  local pass; pass=$(_redis_pass "$name")
  if [[ -n $pass ]]; then
    REDISCLI_AUTH=$pass redis-cli -h "$(_redis_host "$name")" -p "$(_redis_port "$name")" "$@"
  else
    redis-cli -h "$(_redis_host "$name")" -p "$(_redis_port "$name")" "$@"
  fi
}

redis_write_conf() {
  local name=$1 dir="$RESIL_TEST_TMPDIR/$1" pass
  pass=$(_redis_pass "$name")
  mkdir -p "$dir"
  {
    echo "port $(_redis_port "$name")"
    echo "bind $(_redis_host "$name")"
    echo "daemonize no"
    echo "save \"\""
    echo "appendonly no"
    echo "dir $dir"
    echo "logfile $dir/redis.log"
    echo "pidfile $dir/redis-server.pid"
    echo "enable-debug-command yes"   # DEBUG SLEEP, for the fault tests
    echo "maxclients 1000"
    [[ -z $pass ]] || echo "requirepass $pass"
  } >"$dir/redis.conf"
}

redis_stop() {
  local name=$1
  _srv_kill "$(_srv_read_pid "$RESIL_TEST_TMPDIR/$name.pid")" $(_srv_pids_in "$RESIL_TEST_TMPDIR/$name")
}

# Wait up to 10 s until nothing listens on HOST:PORT (HOST: 127.0.0.1).
_srv_wait_port_free() {
  local i
  for ((i = 0; i < 200; i++)); do
    _srv_tcp_open "$1" "${2:-}" || return 0
    sleep 0.05
  done
  _srv_err "port $1 is still in use"
  return 1
}

redis_start() {
  local name=$1 dir="$RESIL_TEST_TMPDIR/$1" i pid=''
  _srv_wait_port_free "$(_redis_port "$name")" "$(_redis_host "$name")" || return 1
  (
    _srv_clean_env
    cd "$dir" && exec setsid -w redis-server "$dir/redis.conf" </dev/null >>"$dir/stdout.log" 2>&1
  ) &
  local child=$!
  disown "$child"   # no "Killed" job notices when a test kills it
  for ((i = 0; i < RESIL_SERVER_WAIT_S * 20; i++)); do
    if [[ $(_redis_cli "$name" ping 2>/dev/null) == PONG ]]; then
      pid=$(_redis_cli "$name" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')
      break
    fi
    kill -0 "$child" 2>/dev/null || break
    sleep 0.05
  done
  if [[ -z $pid ]]; then
    _srv_err "$name did not start on $(_redis_host "$name"):$(_redis_port "$name")"
    _srv_log_tail "$dir/redis.log"; _srv_log_tail "$dir/stdout.log"
    return 1
  fi
  _srv_write_pid "$RESIL_TEST_TMPDIR/$name.pid" "$pid"
}

redis_restart() { redis_stop "$1" && redis_start "$1"; }

redis_healthy() { [[ $(_redis_cli "$1" ping 2>/dev/null) == PONG ]]; }

# redis2 (on demand): write its config the first time, start it unless it
# answers.
redis2_ensure() {
  redis_healthy redis2 && return 0
  [[ -f $RESIL_TEST_TMPDIR/redis2/redis.conf ]] || redis_write_conf redis2 || return 1
  redis_restart redis2
}

# redis3 (on demand), as redis2.
redis3_ensure() {
  redis_healthy redis3 && return 0
  [[ -f $RESIL_TEST_TMPDIR/redis3/redis.conf ]] || redis_write_conf redis3 || return 1
  redis_restart redis3
}

# ------------------------------------------------------------- postgresql ---

# _pg_write_conf DATA ADDR SOCKDIR TITLE NET: a test instance's settings
# (port RESIL_TEST_PG_PORT on ADDR, its socket in SOCKDIR) appended to
# DATA/postgresql.conf, and its pg_hba.conf: the admin over the socket and
# postgres over TCP from NET trusted; everyone else (the resil role) over
# TCP from NET gets a real password check.
_pg_write_conf() {
  local data=$1 addr=$2 sock=$3 title=$4 net=$5
  _srv_as_pg tee -a "$data/postgresql.conf" >/dev/null <<EOF

# ---- resil test instance$title ----
listen_addresses = '$addr'
port = $RESIL_TEST_PG_PORT
unix_socket_directories = '$sock'
max_connections = 30            # small on purpose: tests exhaust it
superuser_reserved_connections = 3
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
log_connections = off
EOF
  _srv_as_pg tee "$data/pg_hba.conf" >/dev/null <<EOF
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       all                      trust
host    all       postgres  $net   trust
host    all       all       $net   scram-sha-256
EOF
}

_pg_dir() { echo "$RESIL_TEST_TMPDIR/pg"; }

# One-time: initdb, configuration, the resil role and database.
pg_init() {
  local dir; dir=$(_pg_dir)
  mkdir -p "$dir"
  _srv_pg_mkdir "$dir" "$RESIL_TEST_PG_DATA" "$RESIL_TEST_PG_SOCKDIR"
  local out
  if ! out=$(_srv_as_pg "$RESIL_TEST_PG_BIN/initdb" -D "$RESIL_TEST_PG_DATA" -U postgres \
      -A trust -E UTF8 --locale=C --no-sync --no-instructions 2>&1); then
    _srv_err "initdb failed"; echo "$out" >&2; return 1
  fi
  # Our settings go last in postgresql.conf, so they win.
  _pg_write_conf "$RESIL_TEST_PG_DATA" 127.0.0.1 "$RESIL_TEST_PG_SOCKDIR" "" 127.0.0.1/32
  pg_start || return 1
  if ! out=$(_srv_as_pg "$RESIL_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
      -h "$RESIL_TEST_PG_SOCKDIR" -p "$RESIL_TEST_PG_PORT" -U postgres -d postgres 2>&1 <<EOF
SET password_encryption = 'scram-sha-256';
CREATE ROLE resil LOGIN PASSWORD '$RESIL_TEST_PG_PASSWORD';
GRANT pg_signal_backend TO resil;
CREATE DATABASE resil OWNER resil;
EOF
  ); then
    _srv_err "creating role/database resil failed"; echo "$out" >&2; return 1
  fi
}

pg_stop() {
  local dir; dir=$(_pg_dir)
  local pids; pids=$(_srv_pids_in "$RESIL_TEST_PG_DATA")
  # Resume everything first: a stopped postmaster ignores pg_ctl.
  [[ -z $pids ]] || kill -CONT $pids 2>/dev/null || true
  if [[ -f $RESIL_TEST_PG_DATA/postmaster.pid ]] &&
      _srv_ours "$(_srv_read_pid "$RESIL_TEST_PG_DATA/postmaster.pid")"; then
    _srv_as_pg "$RESIL_TEST_PG_BIN/pg_ctl" -D "$RESIL_TEST_PG_DATA" -s -w -t 10 \
      -m immediate stop >/dev/null 2>&1 || true
  fi
  # Backends orphaned by a killed postmaster, or anything left: they all work
  # in the data directory.
  _srv_kill $(_srv_pids_in "$RESIL_TEST_PG_DATA") || return 1
  # Lock files of a killed postmaster: its pid can linger as a zombie, which
  # PostgreSQL would take for a live server and refuse to start.
  rm -f "$RESIL_TEST_PG_DATA/postmaster.pid" "$RESIL_TEST_PG_SOCKDIR"/.s.PGSQL.*
}

pg_start() {
  local dir out pid i; dir=$(_pg_dir)
  if ! out=$(_srv_clean_env; _srv_as_pg setsid -w "$RESIL_TEST_PG_BIN/pg_ctl" -D "$RESIL_TEST_PG_DATA" \
      -l "$dir/postgres.log" -s -w -t "$RESIL_SERVER_WAIT_S" start </dev/null 2>&1); then
    _srv_err "postgres did not start on 127.0.0.1:$RESIL_TEST_PG_PORT"
    echo "$out" >&2; _srv_log_tail "$dir/postgres.log"
    return 1
  fi
  for ((i = 0; i < RESIL_SERVER_WAIT_S * 10; i++)); do
    "$RESIL_TEST_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$RESIL_TEST_PG_PORT" -t 1 && break
    sleep 0.1
  done
  pid=$(_srv_read_pid "$RESIL_TEST_PG_DATA/postmaster.pid")
  if ! _srv_ours "$pid" || ! "$RESIL_TEST_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$RESIL_TEST_PG_PORT"; then
    _srv_err "postgres is not ready on 127.0.0.1:$RESIL_TEST_PG_PORT"
    _srv_log_tail "$dir/postgres.log"
    return 1
  fi
  _srv_write_pid "$RESIL_TEST_TMPDIR/pg.pid" "$pid"
}

pg_restart() { pg_stop && pg_start; }

pg_healthy() { "$RESIL_TEST_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$RESIL_TEST_PG_PORT" -t 2; }

# ---------------------------------------------------------------- pg2 --------
# The failover twin (on demand): its own data directory, listening on
# RESIL_TEST_PG2_ADDR with RESIL_TEST_PG_PORT; the resil role and database
# with the same password; the same trust/scram rules for 127.0.0.0/8.

_pg2_dir() { echo "$RESIL_TEST_TMPDIR/pg2"; }

pg2_healthy() {
  "$RESIL_TEST_PG_BIN/pg_isready" -q -h "$RESIL_TEST_PG2_ADDR" -p "$RESIL_TEST_PG_PORT" -t 2
}

_pg2_init() {
  local dir data sock out; dir=$(_pg2_dir); data=$dir/data; sock=$dir/sock
  rm -rf "$dir"
  mkdir -p "$dir"
  _srv_pg_mkdir "$dir" "$data" "$sock"
  if ! out=$(_srv_as_pg "$RESIL_TEST_PG_BIN/initdb" -D "$data" -U postgres \
      -A trust -E UTF8 --locale=C --no-sync --no-instructions 2>&1); then
    _srv_err "pg2: initdb failed"; echo "$out" >&2; return 1
  fi
  _pg_write_conf "$data" "$RESIL_TEST_PG2_ADDR" "$sock" ": failover twin" 127.0.0.0/8
}

pg2_stop() {
  local data; data=$(_pg2_dir)/data
  [[ -d $data ]] || return 0
  local pids; pids=$(_srv_pids_in "$data")
  [[ -z $pids ]] || kill -CONT $pids 2>/dev/null || true
  if [[ -f $data/postmaster.pid ]] && _srv_ours "$(_srv_read_pid "$data/postmaster.pid")"; then
    _srv_as_pg "$RESIL_TEST_PG_BIN/pg_ctl" -D "$data" -s -w -t 10 -m immediate stop \
      >/dev/null 2>&1 || true
  fi
  _srv_kill $(_srv_pids_in "$data") || return 1
  rm -f "$data/postmaster.pid" "$(_pg2_dir)"/sock/.s.PGSQL.*
}

# Start pg2 unless it answers; initdb (and create the role) the first time.
pg2_ensure() {
  pg2_healthy && return 0
  local dir data fresh=0 out i; dir=$(_pg2_dir); data=$dir/data
  if [[ ! -f $data/PG_VERSION || ! -f $dir/initialized ]]; then
    _pg2_init || return 1
    fresh=1
  else
    pg2_stop || return 1
  fi
  if ! out=$(_srv_clean_env; _srv_as_pg setsid -w "$RESIL_TEST_PG_BIN/pg_ctl" -D "$data" \
      -l "$dir/postgres.log" -s -w -t "$RESIL_SERVER_WAIT_S" start </dev/null 2>&1); then
    _srv_err "pg2 did not start on $RESIL_TEST_PG2_ADDR:$RESIL_TEST_PG_PORT"
    echo "$out" >&2; _srv_log_tail "$dir/postgres.log"
    return 1
  fi
  for ((i = 0; i < RESIL_SERVER_WAIT_S * 10; i++)); do
    pg2_healthy && break
    sleep 0.1
  done
  pg2_healthy || { _srv_err "pg2 is not ready"; _srv_log_tail "$dir/postgres.log"; return 1; }
  if ((fresh)); then
    if ! out=$(_srv_as_pg "$RESIL_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$dir/sock" -p "$RESIL_TEST_PG_PORT" -U postgres -d postgres 2>&1 <<EOF
SET password_encryption = 'scram-sha-256';
CREATE ROLE resil LOGIN PASSWORD '$RESIL_TEST_PG_PASSWORD';
CREATE DATABASE resil OWNER resil;
EOF
    ); then
      _srv_err "pg2: creating role/database resil failed"; echo "$out" >&2; return 1
    fi
    touch "$dir/initialized"
  fi
  _srv_write_pid "$RESIL_TEST_TMPDIR/pg2.pid" "$(_srv_read_pid "$data/postmaster.pid")"
}

# -------------------------------------------------------------- pgbouncer ---

_pgb_dir() { echo "$RESIL_TEST_TMPDIR/pgbouncer"; }

pgbouncer_write_conf() {
  local dir; dir=$(_pgb_dir)
  mkdir -p "$dir"; _srv_pg_mkdir "$dir"
  _srv_as_pg tee "$dir/userlist.txt" >/dev/null <<EOF
"resil" "$RESIL_TEST_PG_PASSWORD"
EOF
  _srv_as_pg tee "$dir/pgbouncer.ini" >/dev/null <<EOF
[databases]
resil = host=127.0.0.1 port=$RESIL_TEST_PG_PORT dbname=resil

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $RESIL_TEST_PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
admin_users = resil
stats_users = resil
pool_mode = transaction
default_pool_size = 5
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer-self.pid
EOF
}

pgbouncer_stop() {
  local dir; dir=$(_pgb_dir)
  _srv_kill "$(_srv_read_pid "$RESIL_TEST_TMPDIR/pgbouncer.pid")" \
    "$(_srv_read_pid "$dir/pgbouncer-self.pid")" $(_srv_pids_in "$dir") || return 1
  rm -f "$dir/pgbouncer-self.pid"
}

pgbouncer_start() {
  local dir pid='' i; dir=$(_pgb_dir)
  _srv_wait_port_free "$RESIL_TEST_PGBOUNCER_PORT" || return 1
  local SRV_PG_EXEC; _srv_pg_exec_prefix
  (
    _srv_clean_env
    cd "$dir" && exec setsid -w "${SRV_PG_EXEC[@]}" pgbouncer "$dir/pgbouncer.ini" \
      </dev/null >>"$dir/stdout.log" 2>&1
  ) &
  disown $!
  for ((i = 0; i < RESIL_SERVER_WAIT_S * 20; i++)); do
    if _srv_tcp_open "$RESIL_TEST_PGBOUNCER_PORT"; then
      pid=$(_srv_read_pid "$dir/pgbouncer-self.pid")
      _srv_ours "$pid" && break
      pid=
    fi
    sleep 0.05
  done
  if [[ -z $pid ]]; then
    _srv_err "pgbouncer did not start on 127.0.0.1:$RESIL_TEST_PGBOUNCER_PORT"
    _srv_log_tail "$dir/pgbouncer.log"; _srv_log_tail "$dir/stdout.log"
    return 1
  fi
  _srv_write_pid "$RESIL_TEST_TMPDIR/pgbouncer.pid" "$pid"
}

pgbouncer_restart() { pgbouncer_stop && pgbouncer_start; }

pgbouncer_healthy() { _srv_tcp_open "$RESIL_TEST_PGBOUNCER_PORT"; }

# ------------------------------------------------------------------- http ---
# HOOK: an HTTP test server for the libcurl adapter's tests goes here.
# Whoever adds it: start it on 127.0.0.1 on a port from alloc_ports, in
# "$RESIL_TEST_TMPDIR/http", export RESIL_TEST_HTTP_PORT (and _PID, a
# restart-http.sh like the others, a pid file http.pid), add its variables to
# _servers_save_env, stop it in stop_http_server and check it in
# ensure_servers_healthy. Until then RESIL_TEST_HTTP_PORT stays unset and HTTP
# integration tests should skip (fail under CI=true once this exists).
start_http_server() { :; }
stop_http_server() { :; }

# ---------------------------------------------------------- orchestration ---

# Everything a restart script needs, as shell assignments.
_servers_save_env() {
  local v f="$RESIL_TEST_TMPDIR/servers.env"
  {
    echo "# written by scripts/lib/servers.sh; sourced by the restart scripts"
    for v in RESIL_SERVERS_LIB RESIL_TEST_TMPDIR RESIL_PG_VERSION RESIL_SERVER_WAIT_S \
        RESIL_TEST_REDIS_PORT RESIL_TEST_REDIS_AUTH_PORT RESIL_TEST_REDIS_PASSWORD \
        RESIL_TEST_PG_PORT RESIL_TEST_PG_DATA RESIL_TEST_PG_BIN RESIL_TEST_PG_SOCKDIR \
        RESIL_TEST_PG_PASSWORD RESIL_TEST_PGBOUNCER_PORT RESIL_TEST_PG2_ADDR \
        RESIL_TEST_REDIS2_ADDR RESIL_TEST_REDIS3_ADDR; do
      printf '%s=%q\n' "$v" "${!v}"
    done
  } >"$f"
}

# _servers_write_restart NAME COMMAND...: $RESIL_TEST_TMPDIR/restart-NAME.sh
_servers_write_restart() {
  local name=$1 f="$RESIL_TEST_TMPDIR/restart-$1.sh"
  shift
  cat >"$f" <<EOF
#!/usr/bin/env bash
# Restart the test $name server on the same port, whatever state it is in.
# Prints nothing on success; the new pid is in $RESIL_TEST_TMPDIR/$name.pid.
set -uo pipefail
. "\$(dirname "\$0")/servers.env"
. "\$RESIL_SERVERS_LIB"
$*
EOF
  chmod 755 "$f"
}

# start_all_servers ROOT: ROOT must be an empty directory that this run owns.
start_all_servers() {
  export RESIL_TEST_TMPDIR=$1
  export RESIL_SERVERS_LIB=${BASH_SOURCE[0]}
  RESIL_SERVERS_LIB=$(cd "$(dirname "$RESIL_SERVERS_LIB")" && pwd)/$(basename "$RESIL_SERVERS_LIB")
  chmod 755 "$RESIL_TEST_TMPDIR"   # the postgres user must reach its dirs

  local out ports
  out=$(alloc_ports 4) || return 1
  mapfile -t ports <<<"$out"
  export RESIL_TEST_REDIS_PORT=${ports[0]}
  export RESIL_TEST_REDIS_AUTH_PORT=${ports[1]}
  export RESIL_TEST_PG_PORT=${ports[2]}
  export RESIL_TEST_PGBOUNCER_PORT=${ports[3]}

  export RESIL_TEST_REDIS_PASSWORD; RESIL_TEST_REDIS_PASSWORD=$(_srv_random_password)
  export RESIL_TEST_PG_PASSWORD; RESIL_TEST_PG_PASSWORD=$(_srv_random_password)
  export RESIL_TEST_PG_BIN=/usr/lib/postgresql/$RESIL_PG_VERSION/bin
  export RESIL_TEST_PG_DATA=$RESIL_TEST_TMPDIR/pg/data
  export RESIL_TEST_PG_SOCKDIR=$RESIL_TEST_TMPDIR/pg/sock
  export RESIL_TEST_PG2_ADDR=127.0.0.2 RESIL_TEST_REDIS2_ADDR=127.0.0.2 RESIL_TEST_REDIS3_ADDR=127.0.0.3
  _servers_save_env

  _servers_write_restart redis redis_restart redis
  _servers_write_restart redis-auth redis_restart redis-auth
  _servers_write_restart pg pg_restart
  _servers_write_restart pgbouncer pgbouncer_restart
  _servers_write_restart pg2 pg2_ensure
  _servers_write_restart redis2 redis2_ensure
  _servers_write_restart redis3 redis3_ensure

  redis_write_conf redis && redis_start redis || return 1
  redis_write_conf redis-auth && redis_start redis-auth || return 1
  pg_init || return 1
  pgbouncer_write_conf && pgbouncer_start || return 1
  start_http_server || return 1

  export RESIL_TEST_REDIS_PID; RESIL_TEST_REDIS_PID=$(_srv_read_pid "$RESIL_TEST_TMPDIR/redis.pid")
  export RESIL_TEST_REDIS_AUTH_PID; RESIL_TEST_REDIS_AUTH_PID=$(_srv_read_pid "$RESIL_TEST_TMPDIR/redis-auth.pid")
  export RESIL_TEST_PG_PID; RESIL_TEST_PG_PID=$(_srv_read_pid "$RESIL_TEST_TMPDIR/pg.pid")
  export RESIL_TEST_PGBOUNCER_PID; RESIL_TEST_PGBOUNCER_PID=$(_srv_read_pid "$RESIL_TEST_TMPDIR/pgbouncer.pid")
  export RESIL_TEST_REDIS_RESTART=$RESIL_TEST_TMPDIR/restart-redis.sh
  export RESIL_TEST_REDIS_AUTH_RESTART=$RESIL_TEST_TMPDIR/restart-redis-auth.sh
  export RESIL_TEST_PG_RESTART=$RESIL_TEST_TMPDIR/restart-pg.sh
  export RESIL_TEST_PGBOUNCER_RESTART=$RESIL_TEST_TMPDIR/restart-pgbouncer.sh
  export RESIL_TEST_PG2_START=$RESIL_TEST_TMPDIR/restart-pg2.sh
  export RESIL_TEST_REDIS2_START=$RESIL_TEST_TMPDIR/restart-redis2.sh
  export RESIL_TEST_REDIS3_START=$RESIL_TEST_TMPDIR/restart-redis3.sh
  export RESIL_TEST_PG2_ADMIN_CONNINFO="host=$RESIL_TEST_PG2_ADDR port=$RESIL_TEST_PG_PORT dbname=resil user=postgres"
  export RESIL_TEST_PG_CONNINFO="host=127.0.0.1 port=$RESIL_TEST_PG_PORT dbname=resil user=resil password=$RESIL_TEST_PG_PASSWORD"
  export RESIL_TEST_PG_ADMIN_CONNINFO="host=127.0.0.1 port=$RESIL_TEST_PG_PORT dbname=resil user=postgres"
  export RESIL_TEST_PGBOUNCER_CONNINFO="host=127.0.0.1 port=$RESIL_TEST_PGBOUNCER_PORT dbname=resil user=resil password=$RESIL_TEST_PG_PASSWORD"
}

# Restart whatever a previous test run left stopped or dead.
ensure_servers_healthy() {
  [[ -n ${RESIL_TEST_TMPDIR:-} && -d ${RESIL_TEST_TMPDIR:-} ]] || return 1
  local ok=0
  redis_healthy redis || { echo "servers: redis not answering; restarting" >&2; redis_restart redis || ok=1; }
  redis_healthy redis-auth || { echo "servers: redis-auth not answering; restarting" >&2; redis_restart redis-auth || ok=1; }
  pg_healthy || { echo "servers: postgres not answering; restarting" >&2; pg_restart || ok=1; }
  pgbouncer_healthy || { echo "servers: pgbouncer not answering; restarting" >&2; pgbouncer_restart || ok=1; }
  return $ok
}

# Stop every server of this run and remove the temporary root. Safe to call
# more than once and from an EXIT trap; prints nothing unless something fails.
stop_all_servers() {
  [[ -n ${RESIL_TEST_TMPDIR:-} && -d ${RESIL_TEST_TMPDIR:-} ]] || return 0
  stop_http_server || true
  pgbouncer_stop || true
  redis_stop redis-auth || true
  redis_stop redis || true
  redis_stop redis2 || true
  redis_stop redis3 || true
  pg2_stop || true
  [[ -z ${RESIL_TEST_PG_DATA:-} ]] || pg_stop || true
  # Anything else still working in our root (a server a test started itself).
  _srv_kill $(_srv_pids_in "$RESIL_TEST_TMPDIR") || true
  rm -rf "$RESIL_TEST_TMPDIR"
  unset RESIL_TEST_TMPDIR
}
