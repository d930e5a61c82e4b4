#!/usr/bin/env bash
# `mta queue` at scale: fills a queue with COUNT messages (default 1,000,000), then times
# the queue commands on it, first with no server (the command opens the queue itself),
# then through the control socket of a running `mta serve`.
#
#   bash bench/servers/queue_control.sh                  # 1,000,000 messages: about 5 minutes
#   COUNT=100000 bash bench/servers/queue_control.sh     # a quick run
#
# Results: bench/servers/results/queue-control-<date>.md. See bench/servers/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
COUNT="${COUNT:-1000000}"
KEEP_WORK="${KEEP_WORK:-0}"
RESULTS="$HERE/results"
mkdir -p "$RESULTS"
STAMP=$(date +%Y%m%d-%H%M%S)
REPORT="$RESULTS/queue-control-$STAMP.md"
WORK=$(mktemp -d /var/tmp/mta-queue-control.XXXXXX)
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [ "$KEEP_WORK" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building mta and fill_queue (release)"
(cd "$ROOT" && cargo build --release -q -p mta-bin && cargo build --release -q -p mail-queue --example fill_queue)
MTA="$ROOT/target/release/mta"
FILL="$ROOT/target/release/examples/fill_queue"

# Remote mail would go to a relay that refuses connections; nothing is due anyway once
# every message is held.
cat >"$WORK/mta.toml" <<TOML
hostname = "mta.bench.test"
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
[queue]
path = "$WORK/queue"
retry_intervals = ["1h"]
[outbound]
relay = "127.0.0.1:9"
tls = "disabled"
TOML

log "filling $WORK/queue with $COUNT messages"
FILL_OUT=$("$FILL" "$WORK/queue" "$COUNT")
log "$FILL_OUT"
QUEUE_SIZE=$(du -sh "$WORK/queue" | cut -f1)

ROWS=""
# timed NAME ARGS...: runs `mta queue ARGS`, records wall time and peak RSS.
timed() {
    local name=$1; shift
    local t0 t1 rss
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$WORK/time" "$MTA" queue --config "$WORK/mta.toml" "$@" >"$WORK/out" 2>"$WORK/err" \
        || { cat "$WORK/err" >&2; log "failed: mta queue $*"; exit 1; }
    t1=$(date +%s.%N)
    rss=$(tail -1 "$WORK/time")
    local secs
    secs=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    log "$name: mta queue $* -> ${secs} s, peak RSS of the command $((rss / 1024)) MB; $(tail -1 "$WORK/out")"
    ROWS+="| $name | \`mta queue $*\` | $secs | $((rss / 1024)) | $(tail -1 "$WORK/out" | tr '|' '/') |"$'\n'
}

command -v /usr/bin/time >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y time; }

timed "no server" list --limit 100
timed "no server" summary
timed "no server" hold --all
ONE=$("$MTA" queue --config "$WORK/mta.toml" list --limit 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"][0]["id"])')

log "starting mta serve on the queue"
t0=$(date +%s.%N)
RUST_LOG=warn "$MTA" serve --config "$WORK/mta.toml" >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
while ! [ -S "$WORK/queue/control.sock" ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.err" >&2; exit 1; }
    sleep 0.05
done
t1=$(date +%s.%N)
START_SECS=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
log "mta serve ready after $START_SECS s"

timed "server" list --limit 100
timed "server" list --domain d42.example --limit 100
timed "server" list --state deferred --limit 100
timed "server" summary
timed "server" show "$ONE"
timed "server" release "$ONE"
timed "server" hold "$ONE"
SERVER_RSS=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$SERVER_PID/status")

{
cat <<MD
# \`mta queue\` with $COUNT messages

- date: $(date -Iseconds); $(nproc) cores; kernel $(uname -r); load at the end: $(cut -d' ' -f1-3 /proc/loadavg)
- queue: sled (default) on the real disk ($WORK), $QUEUE_SIZE; filled by
  \`target/release/examples/fill_queue\` ($FILL_OUT): 1 KB bodies, one recipient each
  in 100 domains, 7 senders
- \`mta serve\` opened it (read every message's metadata) and had its control socket up
  after $START_SECS s; its RSS afterwards: $SERVER_RSS MB
- "no server": the command opens the queue itself (that read of every message included);
  "server": through the control socket of the running server

| where | command | seconds | peak RSS of the command (MB) | last line of output |
|---|---|---|---|---|
$ROWS
MD
} | tee "$REPORT"
log "report: $REPORT"
