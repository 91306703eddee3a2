# shellcheck shell=bash
# Debian packages the build and the test servers need: the ONE place to add one.
# Sourced by scripts/test.sh (and usable by other scripts: `ensure_packages`).

RESIL_DEBIAN_PACKAGES=(
  # toolchains and build
  build-essential clang libclang-rt-14-dev meson ninja-build pkg-config
  # test framework and the adapters' client libraries
  libcmocka-dev libhiredis-dev libpq-dev libcurl4-openssl-dev
  # servers the integration and fault tests run against
  redis-server postgresql postgresql-client pgbouncer
  # promtool (checks the Prometheus text exposition, and the rules and dashboard in deploy/)
  prometheus
  # tools the harness itself uses (python3-yaml: the operator kit's tests, suite ops)
  curl openssl procps iproute2 util-linux python3-minimal python3-yaml iptables
  # the demo's picture (scripts/demo-plot.gp; meson test brownout-plot)
  gnuplot-nox
)

# ensure_packages [PKG...]: install whichever of the packages (default: the
# list above) are not installed yet. Runs `apt-get update` at most once, and
# only when something is missing.
ensure_packages() {
  local pkgs=("$@") missing=() p status
  ((${#pkgs[@]})) || pkgs=("${RESIL_DEBIAN_PACKAGES[@]}")
  for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0

  echo "==> installing missing Debian packages: ${missing[*]}"
  if ((EUID != 0)); then
    echo "error: not root; install them first: apt-get install ${missing[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}
