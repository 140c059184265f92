#!/usr/bin/env bash
# Fresh Debian 12 machine, as root: install every dependency, build, start the
# node agent with its defaults (state /var/lib/redir, socket /run/redir) — as
# the systemd service packaging/systemd/redird.service where systemd is PID 1,
# else in the background — give it the mock provider if it has no provider,
# and end with the short demo (scripts/demo.sh; REDIR_SETUP_NO_DEMO=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }
scripts/install-deps.sh
scripts/build.sh
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
REDIRCTL=/usr/local/sbin/redirctl
agent_up() { "$REDIRCTL" status >/dev/null 2>&1; }

if [[ -d /run/systemd/system ]]; then
  # systemd is PID 1 (what sd_booted() checks): the agent is a service.
  install -m 0755 build/userspace/agent/redird build/tools/redirctl/redirctl /usr/local/sbin/
  install -m 0644 packaging/systemd/redird.service /etc/systemd/system/redird.service
  systemctl daemon-reload
  systemctl enable redird.service >/dev/null
  systemctl restart redird.service   # picks up a rebuilt binary
  how="systemd service redird (journalctl -u redird; systemctl status redird)"
else
  echo "systemd is not PID 1 here ($(cat /proc/1/comm)): starting redird in the background"
  if agent_up; then
    # Replacing the binary under a running agent would leave the old one serving.
    echo "redird is already running: leaving it (and /usr/local/sbin) as they are"
  else
    install -m 0755 build/userspace/agent/redird build/tools/redirctl/redirctl /usr/local/sbin/
    mkdir -p /var/log/redir
    nohup /usr/local/sbin/redird >>/var/log/redir/redird.log 2>&1 &
  fi
  how="background process (log: /var/log/redir/redird.log)"
fi
for _ in $(seq 100); do agent_up && break; sleep 0.1; done
"$REDIRCTL" status

# A working inference.local from the first minute: the mock provider answers
# locally. Only when no provider exists, so a configured node is left alone.
if [[ $("$REDIRCTL" provider list --json) == "[]" ]]; then
  "$REDIRCTL" provider create --name mock --type mock
  "$REDIRCTL" inference set --provider mock --model mock-model
  echo "no provider was configured: inference.local now answers with the mock provider (redirctl provider create … to use a real one)"
fi
echo "redird is running as a $how. Try: redirctl doctor; redirctl run --netns -- curl https://inference.local/v1/models"

if [[ -z "${REDIR_SETUP_NO_DEMO:-}" ]]; then
  echo
  scripts/demo.sh
fi
