#!/usr/bin/env bash
# Runs every benchmark and prints ratios against baselines measured in the
# same run. Exit status is non-zero when a target is missed. Root needed for
# the datapath benchmarks (private network namespace, BPF).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x build/bench/datapath/bench_connect ]] || scripts/build.sh
rc=0
echo "== connect() cost by policy size, and 100k-rule load time"
build/bench/datapath/bench_connect "$@" || rc=1
echo "== DNS responder: queries/s and added latency vs the upstream directly"
build/bench/dns/bench_dns || rc=1
if [[ -x build/bench/tls/bench_tls_leaf ]]; then
  echo "== leaf certificate issuance"
  build/bench/tls/bench_tls_leaf --benchmark_min_time=0.2 || rc=1
fi
if [[ -x build/bench/bench_policy_compile ]]; then
  echo "== policy compile"
  build/bench/bench_policy_compile --benchmark_min_time=0.2 || rc=1
fi
for b in build/bench/*/bench_*; do
  case "$b" in */bench_connect|*/bench_tls_leaf|*/bench_dns) continue;; esac
  [[ -f "$b" && -x "$b" ]] || continue
  echo "== $(basename "$b")"
  "$b" || rc=1
done
echo "== inference terminator vs direct, nginx, mitmproxy, squid (bench/peers)"
bench/peers/run.sh || rc=1
exit $rc
