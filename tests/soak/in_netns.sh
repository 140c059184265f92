#!/usr/bin/env bash
# Runs a sanitized unit test binary inside a fresh network namespace with only
# lo up, so its 127.0.0.1 sockets never touch the host's network.
set -euo pipefail
exec unshare --net sh -c 'ip link set lo up && exec "$@"' sh "$@"
