#!/usr/bin/env bash
# Fresh Debian 12 machine, as root: install every dependency, build, and start
# the node agent with its defaults (state /var/lib/redir, socket /run/redir).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }
scripts/install-deps.sh
scripts/build.sh
install -m 0755 build/userspace/agent/redird build/tools/redirctl/redirctl /usr/local/sbin/
mkdir -p /var/log/redir
if [[ -S /run/redir/redird.sock ]] && /usr/local/sbin/redirctl status >/dev/null 2>&1; then
  echo "redird is already running"; exit 0
fi
nohup /usr/local/sbin/redird >>/var/log/redir/redird.log 2>&1 &
for _ in $(seq 50); do
  /usr/local/sbin/redirctl status >/dev/null 2>&1 && break
  sleep 0.1
done
/usr/local/sbin/redirctl status
echo "redird is running (log: /var/log/redir/redird.log). Try: redirctl doctor; redirctl run -- curl https://inference.local/v1/models"
