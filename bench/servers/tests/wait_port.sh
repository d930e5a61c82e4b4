#!/bin/bash
# Test of common.sh `wait_port PORT PID` (how the benchmarks wait for mta and smtp-sink to
# listen): when another program already listens on PORT (another benchmark run's server),
# the server just started cannot bind and exits; wait_port must then fail, not take the
# other program's listener for it. A server that runs and listens passes.
# Usage: bench/servers/tests/wait_port.sh (COMMON_SH=path: another copy of common.sh).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/servers/common.sh
source "${COMMON_SH:-$HERE/../common.sh}"

PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The other program holding the port.
/usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); time.sleep(30)' "$PORT" &
HOLDER=$!
trap 'kill "$HOLDER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

# A server that could not bind: it has exited.
/usr/bin/python3 -c '
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$PORT" 2>/dev/null &
LOST=$!
if wait_port "$PORT" "$LOST"; then
    echo "FAIL: wait_port accepted the port of another program for an exited server" >&2
    exit 1
fi
# The program that holds the port, running: it is the one listening.
wait_port "$PORT" "$HOLDER" || { echo "FAIL: wait_port refused a running server that listens" >&2; exit 1; }
echo "PASS: wait_port fails for an exited server and passes for a running one"
