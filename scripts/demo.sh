#!/usr/bin/env bash
# The README's first command: install what is missing, build the brownout
# demo and run it. Arguments go to the demo (try --help or --quick):
#
#   bash scripts/demo.sh              # about 80 s
#   bash scripts/demo.sh --quick      # about 16 s
#   bash scripts/demo.sh --no-plot    # no picture (gnuplot not needed)
#   bash scripts/demo.sh --with-servers   # then also real Redis / PostgreSQL 15
#                                     # servers: stalled with SIGSTOP, and a writer
#                                     # failed over (about 1 min more; see below)
#
# Made for a fresh Debian 12 machine as root (or a user with sudo); safe to
# run again: nothing is reinstalled and the build is incremental. The build
# goes to build-demo/ (release); the metrics files, the timeline
# (brownout-timeline.tsv, brownout-phases.tsv) and its picture (brownout.png,
# drawn by gnuplot with scripts/demo-plot.gp) go to the current directory
# (the repository root) unless you pass --out-dir DIR.
#
# --with-servers also installs redis-server, PostgreSQL 15 and pgbouncer and
# the adapters' client libraries (hiredis, libpq), starts throwaway servers
# on 127.0.0.1 (and their failover twins on 127.0.0.2) with
# scripts/lib/servers.sh - the same code the tests use, in a temporary
# directory, PostgreSQL as the postgres user when root - runs the demo with
# their RESIL_TEST_* variables, and stops them and removes the directory
# when it ends, however it ends.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD=build-demo
# libcurl: the demo's dependency is then a real HTTP server in the demo,
# called through resil-http and plain libcurl (without it: simulated).
PACKAGES=(build-essential meson ninja-build pkg-config libcurl4-openssl-dev)

say() { printf '==> %s\n' "$*"; }

# --no-plot is ours (no picture, no gnuplot); everything else goes to the
# demo. The picture goes where the demo writes its files (--out-dir).
PLOT=1
SERVERS=0
OUT_DIR=.
args=()
want_out=0
HELP=0
for a in "$@"; do
  if ((want_out)); then OUT_DIR=$a; want_out=0; fi
  case $a in
    --no-plot) PLOT=0; continue ;;
    --help | -h) PLOT=0 HELP=1 ;;
    --with-servers) SERVERS=1 ;;
    --out-dir) want_out=1 ;;
    --out-dir=*) OUT_DIR=${a#--out-dir=} ;;
  esac
  args+=("$a")
done
# gnuplot-nox: the picture of the run (not needed with --no-plot).
((PLOT)) && PACKAGES+=(gnuplot-nox)
# --with-servers: the servers scripts/lib/servers.sh starts, and the adapters.
((SERVERS && !HELP)) &&
  PACKAGES+=(libhiredis-dev libpq-dev redis-server postgresql postgresql-client pgbouncer)

# ---- 1. packages -------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO=(sudo)
    else
      echo "demo.sh: missing packages: ${missing[*]}" >&2
      echo "demo.sh: run as root, or install them: apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
  say "installing ${missing[*]}"
  # Refresh the package lists only when there are none (fresh images) or
  # when installing from the ones present fails.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    say "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    apt_install
  elif ! apt_install; then
    say "apt-get update, then retrying"
    "${SUDO[@]}" apt-get update -qq
    apt_install
  fi
fi

# ---- 2. configure --------------------------------------------------------------
# Tests off (no cmocka needed); adapters stay on auto: they are built when
# their driver libraries are present. The demo uses the HTTP adapter when
# libcurl is there (installed above) and falls back to --backend sim if not;
# its HTTP server, tools/testhttpd, is built whatever -Dtests says.
opts=(--buildtype=release -Dtests=disabled)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [[ -f "$BUILD/meson-private/coredata.dat" ]]; then
  say "reconfiguring $BUILD/"
  if ! meson setup --reconfigure "${opts[@]}" "$BUILD" >"$log" 2>&1; then
    say "reconfigure failed; configuring $BUILD/ from scratch"
    meson setup --wipe "${opts[@]}" "$BUILD" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  fi
else
  say "configuring $BUILD/"
  meson setup "${opts[@]}" "$BUILD" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
fi
mv -f "$log" "$BUILD/demo-setup.log"
trap - EXIT

# ---- 3. build only the demo ----------------------------------------------------
say "building examples/brownout and tools/testhttpd"
if ! ninja -C "$BUILD" examples/brownout tools/testhttpd >"$BUILD/demo-build.log" 2>&1; then
  cat "$BUILD/demo-build.log" >&2
  exit 1
fi

# ---- 4. the servers (--with-servers) ---------------------------------------------
if ((SERVERS && !HELP)); then
  # shellcheck source=lib/servers.sh
  . scripts/lib/servers.sh
  root=$(mktemp -d /tmp/resil-demo-servers.XXXXXX)
  trap 'stop_all_servers' EXIT
  say "starting throwaway Redis, PostgreSQL 15 and pgbouncer on 127.0.0.1 (scripts/lib/servers.sh, in $root)"
  start_all_servers "$root" || { echo "demo.sh: the servers did not start (above)" >&2; exit 1; }
fi

# ---- 5. run ----------------------------------------------------------------------
say "running examples/brownout ${args[*]}"
echo
rc=0
"$BUILD/examples/brownout" "${args[@]}" || rc=$?
((rc == 0 && PLOT)) || exit "$rc"

# ---- 6. the picture ------------------------------------------------------------
png="$OUT_DIR/brownout.png"
if gnuplot -e "dir='${OUT_DIR//\'/}'; out='${png//\'/}'" scripts/demo-plot.gp; then
  echo "  wrote $png (the timeline: latency, successes, rejections, breaker state)"
else
  echo "demo.sh: gnuplot failed to draw $png (the table above stands)" >&2
  exit 1
fi
