#!/usr/bin/env bash
# Installs everything redir needs to build and test, from Debian's packages
# (and the npm registry for the Node test clients only). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  build-essential cmake pkg-config git ccache
  # the soak's sanitizer build (tests/soak): Ninja keeps both cores busy across targets
  ninja-build
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev
  libssl-dev libboost1.81-dev rapidjson-dev libspdlog-dev libfmt-dev
  # redird's allocator (REDIR_MALLOC=tcmalloc, the default)
  libgoogle-perftools-dev
  libnl-3-dev libnl-route-3-dev libnftables-dev libcli11-dev libldns-dev
  libgtest-dev libgmock-dev libbenchmark-dev libclang-rt-14-dev liburing-dev libseccomp-dev
  iproute2 curl ca-certificates python3 python3-yaml nodejs npm dnsutils ccache
  # service files: systemd-analyze verifies the unit (tests/packaging)
  systemd
  # kernel matrix (scripts/kernel-matrix.sh fetches the guest kernels itself)
  qemu-system-x86 busybox-static kmod cpio xz-utils zstd
  # bench/peers: the peers redir is measured against, and the load generator
  nginx wrk mitmproxy squid-openssl
)
# Services these packages start on install: the benchmark runs its own instances.
SERVICES=(nginx squid)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # nodejs may come from another repository on some images; npm is only needed if absent.
  if command -v npm >/dev/null 2>&1; then
    missing=("${missing[@]/npm}")
  fi
  apt-get install -y -qq --no-install-recommends ${missing[@]} >/dev/null
  if command -v systemctl >/dev/null 2>&1; then
    for s in "${SERVICES[@]}"; do
      [[ " ${missing[*]} " == *" $s"* ]] && systemctl disable --now "$s" >/dev/null 2>&1 || true
    done
  fi
fi

# Node SDK clients for the end-to-end tests.
if [[ -f tests/e2e/node/package.json && ! -d tests/e2e/node/node_modules/openai ]]; then
  (cd tests/e2e/node && npm install --no-audit --no-fund --loglevel=error)
fi

# The official OpenAI Python SDK for the end-to-end tests, where Debian packages
# it (Debian 12 does not, and PyPI is not a registry these machines reach): its
# tests skip with that reason otherwise.
if ! /usr/bin/python3 -c 'import openai' 2>/dev/null && apt-cache show python3-openai >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-openai >/dev/null
fi
