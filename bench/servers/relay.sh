#!/usr/bin/env bash
# End-to-end relay throughput: `mta serve` versus Postfix, same machine, same run.
#
#   smtp-source --SMTP--> peer (mta or Postfix) --SMTP--> smtp-sink
#
# Load generator: Postfix's smtp-source (HELO, no pipelining, one message per connection).
# The peer accepts each message durably (both fsync before 250: Postfix fsyncs each queue
# file, mta group-commits), then relays it to smtp-sink, which stores nothing. The clock
# runs from the start of smtp-source until smtp-sink has received the last message.
# smtp-sink counts the messages it receives (-c) and appends every transaction to a
# dump file on tmpfs (-D); each message has its own recipient (smtp-source -N plus a run
# tag), so the script checks that every message of the run arrived exactly once.
#
# Run as root:   bash bench/servers/relay.sh
# See bench/servers/README.md for the environment variables.
set -euo pipefail

# ---------------------------------------------------------------- settings
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

COUNT="${COUNT:-20000}"                  # messages per smtp-source run, small messages
COUNT_LARGE="${COUNT_LARGE:-6000}"      # messages per run for sizes >= 16 KB
REPS="${REPS:-3}"                        # runs per peer and configuration (median reported)
SIZES="${SIZES:-1024 65536}"             # message sizes in bytes (smtp-source -l)
SESSIONS="${SESSIONS:-20 100}"           # concurrent sessions (smtp-source -s)
# Deliveries at once to the one destination: mta `[outbound] max_per_destination`,
# Postfix `<transport>_destination_concurrency_limit`. One mta instance and one Postfix
# transport per value; every value is measured.
DEST_LIMITS="${DEST_LIMITS:-20 50}"
# Peers, run interleaved in this order for every repetition (mta and postfix once per
# value of DEST_LIMITS):
#   mta      `mta serve`, [outbound] relay = "127.0.0.1:$SINK_PORT", RUST_LOG=$MTA_LOG
#   postfix  a dedicated Postfix instance, transport smtp<N> to [127.0.0.1]:$SINK_PORT
#   sink     smtp-source straight to smtp-sink: the ceiling of the load generator
PEERS="${PEERS:-mta postfix sink}"
MTA_MSGS_PER_CONN="${MTA_MSGS_PER_CONN:-}" # [outbound] max_messages_per_connection (empty: mta's default, 100)
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-300}"  # max seconds from the start of a run to the last message
STALL_TIMEOUT="${STALL_TIMEOUT:-30}"   # after smtp-source ends: stop when the sink count has not moved for this long
MTA_LOG="${MTA_LOG:-warn}"             # RUST_LOG of mta
PF_PORT="${PF_PORT:-2565}"
MTA_PORT_BASE="${MTA_PORT_BASE:-2566}" # mta for the i-th value of DEST_LIMITS listens on base+i
SINK_PORT="${SINK_PORT:-2575}"
SENDER="sender@bench.test"

PF_CONF="${PF_CONF:-/etc/postfix-bench-relay}"         # dedicated Postfix config directory
PF_QUEUE="${PF_QUEUE:-/var/spool/postfix-bench-relay}" # dedicated Postfix queue directory
PF_DATA="${PF_DATA:-/var/lib/postfix-bench-relay}"
PF_LOG="${PF_LOG:-/var/log/postfix-bench-relay.log}"

RESULTS_DIR="$HERE/results"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULT_MD="$RESULTS_DIR/relay-$STAMP.md"
RAW="$RESULTS_DIR/relay-$STAMP.raw.tsv"

# shellcheck source=bench/servers/common.sh
. "$HERE/common.sh"

[ "$(id -u)" = 0 ] || die "run as root (installs packages, starts Postfix and smtp-sink)"
[[ " $PEERS " == *" postfix "* ]] || die "PEERS must include postfix (the ratios are to Postfix)"

# ---------------------------------------------------------------- prerequisites
install_postfix
command -v python3 >/dev/null || die "python3 is needed for the sink counter and the statistics"

if [ -z "${MTA_BIN:-}" ]; then
    log "building mta (cargo build --release -p mta-bin)"
    (cd "$ROOT" && cargo build --release -p mta-bin) >&2
    MTA_BIN="$ROOT/target/release/mta"
fi
[ -x "$MTA_BIN" ] || die "no mta binary at $MTA_BIN"
MTA_COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo '+uncommitted changes')"

WORK="$(mktemp -d /var/tmp/mta-relay-bench.XXXXXX)"   # mta queues: on the real disk, not tmpfs
DUMP_DIR="$(mktemp -d /dev/shm/mta-relay-sink.XXXXXX)"  # smtp-sink's dump: tmpfs (no disk I/O)
chown nobody "$DUMP_DIR"
DUMP="$DUMP_DIR/dump"
SINK_OUT="$WORK/sink.out"
mkdir -p "$RESULTS_DIR"
# A private copy: others may rebuild target/release/mta during the run.
cp "$MTA_BIN" "$WORK/mta"
MTA="$WORK/mta"

declare -A PORT PID
i=0
for L in $DEST_LIMITS; do PORT[mta-$L]=$(( MTA_PORT_BASE + i )); i=$(( i + 1 )); done
PORT[postfix]=$PF_PORT; PORT[sink]=$SINK_PORT

# ---------------------------------------------------------------- smtp-sink
sink_start() {
    # -c: running counters on stdout ("sess=N quit=N mesg=N\r" after every message);
    # -D: append every transaction (X-Rcpt-Args: ... then the message) to one dump file;
    # -m: up to 1000 connections at once (default 256).
    smtp-sink -u nobody -c -m 1000 -D "$DUMP" "127.0.0.1:$SINK_PORT" 1024 >"$SINK_OUT" 2>"$WORK/sink.stderr" &
    PID[sink]=$!
    wait_port "$SINK_PORT" "${PID[sink]}" || die "smtp-sink does not listen on $SINK_PORT, or exited (is the port taken by another benchmark run? set SINK_PORT to a free port)"
}

# Messages and sessions (connections) smtp-sink has received since it started: the last
# "sess=N quit=N mesg=N" of its counters, printed as "MESG SESS".
sink_counters() {
    python3 - "$SINK_OUT" <<'PY'
import re, sys
with open(sys.argv[1], "rb") as f:
    f.seek(0, 2); f.seek(max(0, f.tell() - 256))
    m = re.findall(rb"sess=(\d+) quit=\d+ mesg=(\d+)", f.read())
print(f"{int(m[-1][1])} {int(m[-1][0])}" if m else "0 0")
PY
}
sink_count() { sink_counters | cut -d' ' -f1; }
# Connections to smtp-sink open right now (its "sess" counter only counts ended sessions).
sink_open() { ss -Htn state established "( sport = :$SINK_PORT )" 2>/dev/null | wc -l; }

# Started in the background just before smtp-source: polls the sink's counter every 20 ms
# until BASE+COUNT messages have arrived, or (once DONEFLAG exists, i.e. smtp-source has
# ended) the count has not moved for STALL_TIMEOUT s, or DRAIN_TIMEOUT s after T0.
# Writes "received seconds_from_T0_to_the_last_change" to OUT.
SINK_WAITER='
import os, re, sys, time
out, counter, base, count, flag, t0, stall, limit = sys.argv[1:9]
base, count, t0, stall, limit = int(base), int(count), float(t0), float(stall), float(limit)
def read():
    try:
        with open(counter, "rb") as f:
            f.seek(0, 2); f.seek(max(0, f.tell() - 256))
            m = re.findall(rb"mesg=(\d+)", f.read())
        return int(m[-1]) - base if m else 0
    except OSError:
        return 0
n = last = read(); changed = time.time()
while True:
    now = time.time()
    if n != last:
        last, changed = n, now
    if n >= count or now - t0 >= limit:
        break
    if os.path.exists(flag):
        since = max(changed, os.path.getmtime(flag))
        if now - since >= stall:
            break
    time.sleep(0.02)
    n = read()
with open(out, "w") as f:
    f.write(f"{n} {changed - t0:.3f}\n")
'

# ---------------------------------------------------------------- Postfix
pf_start() {
    pf_stop
    mkdir -p "$PF_CONF"
    local transports="" limits="" L
    for L in $DEST_LIMITS; do
        transports+="${transports:+, }sink$L.test=smtp$L:[127.0.0.1]:$SINK_PORT"
        limits+="smtp${L}_destination_concurrency_limit = $L"$'\n'
    done
    {
    pf_main_cf
    cat <<EOF
mydestination = localhost
relay_domains =
# Every message for sinkN.test goes to smtp-sink through the transport smtpN, whose
# concurrency limit per destination is N (mta: [outbound] max_per_destination = N).
transport_maps = inline:{ $transports }
$limits
EOF
    } >"$PF_CONF/main.cf"
    # One smtp(8) transport per concurrency limit.
    {
    pf_master_cf
    for L in $DEST_LIMITS; do printf 'smtp%-5s unix  - - n -     - smtp\n' "$L"; done
    } >"$PF_CONF/master.cf"
    pf_launch
    wait_port "$PF_PORT" || die "Postfix does not listen on $PF_PORT (see $PF_LOG)"
}

# ---------------------------------------------------------------- mta
mta_config() {
    local L=$1 dir=$2 port=$3
    cat <<EOF
# Generated by bench/servers/relay.sh
hostname = "mta.bench.test"

[[listener]]
address = "127.0.0.1:$port"
mode = "relay"

[queue]
path = "$dir/queue"

[relay]
trusted_networks = ["127.0.0.0/8"]

[limits]
max_connections = 20000
max_connections_per_ip = 1000

[outbound]
relay = "127.0.0.1:$SINK_PORT"
tls = "disabled"
max_per_destination = $L
EOF
    [ -z "$MTA_MSGS_PER_CONN" ] || echo "max_messages_per_connection = $MTA_MSGS_PER_CONN"
}

# mta_start LIMIT: its own queue under $WORK/mta-LIMIT
mta_start() {
    local L=$1 peer="mta-$1" dir="$WORK/mta-$1"
    mkdir -p "$dir"
    mta_config "$L" "$dir" "${PORT[$peer]}" >"$dir/mta.toml"
    "$MTA" check-config --config "$dir/mta.toml" >/dev/null
    RUST_LOG="$MTA_LOG" "$MTA" serve --config "$dir/mta.toml" >"$dir/stdout" 2>"$dir/stderr" &
    PID[$peer]=$!
    wait_port "${PORT[$peer]}" "${PID[$peer]}" || { cat "$dir/stderr" >&2; die "$peer does not listen on ${PORT[$peer]}, or exited (is the port taken by another benchmark run? set the *_PORT variables to free ports)"; }
}

cleanup() {
    for p in "${!PID[@]}"; do stop_pid "${PID[$p]}"; done
    pf_stop
    rm -rf "$DUMP_DIR"
    if [ "${KEEP_WORK:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- one run
RUN_ID=0
# run_one PEER LIMIT SIZE SESSIONS COUNT REP -> appends a line to $RAW
#   PEER mta|postfix|sink; LIMIT the destination concurrency ("-" for sink)
run_one() {
    local peer=$1 limit=$2 size=$3 sessions=$4 count=$5 rep=$6
    local key port domain tag base t0 t1 secs rate received last e2e e2e_rate tagged unique
    local errfile rc=0 smtp_errors load flag drops0 drops pfq="-" dupes extra sess0 sess1 conns open0 open1
    RUN_ID=$(( RUN_ID + 1 ))
    case $peer in
        mta) key="mta-$limit"; port=${PORT[$key]}; domain="sink$limit.test" ;;
        postfix) key=postfix; port=$PF_PORT; domain="sink$limit.test" ;;
        sink) key=sink; port=$SINK_PORT; domain="sink.test" ;;
    esac
    # smtp-source -N prepends a sequence number: recipients 0r<id>@..., 1r<id>@..., ...
    tag="r$RUN_ID"
    rm -f "$DUMP" "$WORK/source.done" "$WORK/waiter.out"
    sync   # the previous run's writes are not flushed on our clock
    errfile="$WORK/smtp-source.err"
    load=$(cut -d' ' -f1 /proc/loadavg)
    drops0=$(listen_drops)
    read -r base sess0 < <(sink_counters)
    open0=$(sink_open)
    t0=$(date +%s.%N)
    python3 -c "$SINK_WAITER" "$WORK/waiter.out" "$SINK_OUT" "$base" "$count" "$WORK/source.done" \
        "$t0" "$STALL_TIMEOUT" "$DRAIN_TIMEOUT" &
    local waiter=$!
    smtp-source -N -s "$sessions" -l "$size" -m "$count" -f "$SENDER" -t "$tag@$domain" \
        "127.0.0.1:$port" >/dev/null 2>"$errfile" || rc=$?
    t1=$(date +%s.%N)
    touch "$WORK/source.done"
    wait "$waiter" || true
    drops=$(( $(listen_drops) - drops0 ))
    read -r received last <"$WORK/waiter.out"
    read -r _ sess1 < <(sink_counters)
    open1=$(sink_open)
    # Connections to the sink opened during the run: ended + (open now - open before).
    conns=$(( sess1 - sess0 + open1 - open0 ))
    secs=$(calc "$t1 - $t0")
    rate=$(calc "$count / $secs")
    # The end of the run: the sink received the last message (not before smtp-source ended).
    e2e=$(calc "($last > $secs) ? $last : $secs")
    e2e_rate=$(calc "$count / $e2e")
    # Every message of this run has its own recipient <n>r<id>@domain: count them, once each.
    read -r tagged unique < <({ grep -ao "X-Rcpt-Args: <[0-9]*$tag@" "$DUMP" 2>/dev/null || true; } \
        | sort | uniq -c | awk '{ t += $1; u++ } END { print t + 0, u + 0 }')
    dupes=$(( tagged - unique ))
    extra=$(( received - tagged ))   # messages of other runs that arrived during this one
    rm -f "$DUMP"
    smtp_errors=$(wc -l <"$errfile")
    [ "$peer" = postfix ] && pfq=$(pf_queue_len)
    flag=ok
    if [ "$unique" -ne "$count" ]; then flag=MISSING
    elif [ "$dupes" -ne 0 ]; then flag=DUPLICATES
    elif [ "$rc" -ne 0 ] || [ "$smtp_errors" -ne 0 ]; then flag=ERRORS
    elif [ "$extra" -ne 0 ]; then flag=STRAGGLERS
    fi
    if [ "$flag" != ok ]; then
        log "  !! $key size=$size s=$sessions rep=$rep: $unique/$count distinct messages at the sink, $dupes duplicates, $extra from other runs, smtp-source rc=$rc, $smtp_errors error lines:"
        head -5 "$errfile" | sed 's/^/     /' >&2
        [ "$smtp_errors" -eq 0 ] || cp "$errfile" "$RESULTS_DIR/relay-$STAMP.$key-$size-$sessions-$rep.smtp-source.err"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%.1f\t%.3f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$peer" "$limit" "$size" "$sessions" "$rep" "$count" "$secs" "$rate" "$e2e" "$e2e_rate" \
        "$unique" "$dupes" "$extra" "$smtp_errors" "$pfq" "$load" "$flag" "$drops" "$conns" >>"$RAW"
    log "  $(printf '%-10s' "$key") size=$size s=$sessions rep=$rep: $count msgs, accepted in $(printf %.2f "$secs") s ($(printf %5.0f "$rate")/s), all at the sink after $(printf %.2f "$e2e") s = $(printf %5.0f "$e2e_rate") msgs/s; at sink $unique/$count dup=$dupes other=$extra sink-connections=$conns drops=$drops load1=$load $flag"
}

# ---------------------------------------------------------------- main
log "work dir $WORK; mta $MTA_BIN ($MTA_COMMIT); PEERS=\"$PEERS\" DEST_LIMITS=\"$DEST_LIMITS\" COUNT=$COUNT COUNT_LARGE=$COUNT_LARGE REPS=$REPS MTA_LOG=$MTA_LOG"
LOAD_START="$(uptime)"
log "uptime: $LOAD_START"
sink_start
pf_start
[[ " $PEERS " == *" mta "* ]] && for L in $DEST_LIMITS; do mta_start "$L"; done

# The order of one repetition.
ORDER=()
for peer in $PEERS; do
    case $peer in
        mta|postfix) ;;
        sink) ;;
        *) die "unknown peer $peer" ;;
    esac
done
for L in $DEST_LIMITS; do
    for peer in $PEERS; do [ "$peer" = sink ] || ORDER+=("$peer:$L"); done
done
[[ " $PEERS " == *" sink "* ]] && ORDER+=("sink:-")

printf 'peer\tlimit\tsize\tsessions\trep\tcount\taccept_s\taccept_msgs_per_s\te2e_s\te2e_msgs_per_s\tat_sink\tduplicates\tother_runs\tsmtp_source_error_lines\tpostfix_left_in_queue\tload1\tflag\tlisten_drops\tsink_connections\n' >"$RAW"

# Warm-up (not measured, not in the table): wakes every server up, opens the connections.
log "warm-up"
for pl in "${ORDER[@]}"; do
    run_one "${pl%%:*}" "${pl#*:}" 1024 5 200 0
done
printf 'peer\tlimit\tsize\tsessions\trep\tcount\taccept_s\taccept_msgs_per_s\te2e_s\te2e_msgs_per_s\tat_sink\tduplicates\tother_runs\tsmtp_source_error_lines\tpostfix_left_in_queue\tload1\tflag\tlisten_drops\tsink_connections\n' >"$RAW"

for size in $SIZES; do
    count=$COUNT
    [ "$size" -ge 16384 ] && count=$COUNT_LARGE
    for s in $SESSIONS; do
        log "size=$size sessions=$s count=$count  ($(uptime | sed 's/.*load/load/'))"
        for rep in $(seq "$REPS"); do
            for pl in "${ORDER[@]}"; do
                run_one "${pl%%:*}" "${pl#*:}" "$size" "$s" "$count" "$rep"
            done
        done
    done
done
LOAD_END="$(uptime)"
log "uptime: $LOAD_END"

# ---------------------------------------------------------------- health
HEALTH="$WORK/health.md"
: >"$HEALTH"
for L in $DEST_LIMITS; do
    [[ " $PEERS " == *" mta "* ]] || break
    peer="mta-$L"; dir="$WORK/$peer"
    alive=yes; kill -0 "${PID[$peer]}" 2>/dev/null || alive="NO (it exited)"
    rss=$(awk '/VmRSS|VmHWM/ { printf "%s %d MB; ", $1, $2/1024 }' "/proc/${PID[$peer]}/status" 2>/dev/null || true)
    stop_pid "${PID[$peer]}"
    warns=$(grep -E ' (WARN|ERROR) ' "$dir/stderr" | grep -v 'no \[tls\]' | grep -v 'running as root' | grep -vc 'tls = "disabled"' || true)
    lines=$(wc -l <"$dir/stderr")
    # What is left in its queue: start it again on the same queue and read its banner.
    waiting=$({ RUST_LOG=warn timeout 5 "$MTA" serve --config "$dir/mta.toml" 2>/dev/null || true; } \
        | { grep -m1 -o '([0-9]* messages waiting)' || true; })
    [ -n "$waiting" ] || waiting="(unknown)"
    echo "- $peer: still running at the end: $alive; $rss log: $lines lines, $warns WARN/ERROR (besides the expected warnings about no [tls], tls = \"disabled\" and running as root); queue directory $(du -sh "$dir/queue" | cut -f1), left in its queue when restarted: $waiting" >>"$HEALTH"
    if [ "$warns" != 0 ]; then
        cp "$dir/stderr" "$RESULTS_DIR/relay-$STAMP.$peer.stderr"
        echo "  (log copied to results/relay-$STAMP.$peer.stderr; first lines below)" >>"$HEALTH"
        grep -E ' (WARN|ERROR) ' "$dir/stderr" | grep -v 'no \[tls\]' | grep -v 'tls = "disabled"' | head -5 | sed 's/^/      /' >>"$HEALTH"
    fi
done
echo "- postfix: $(grep -c -E 'warning|fatal|panic' "$PF_LOG" || true) warning/fatal lines in $PF_LOG; still queued: $(pf_queue_len); deferred deliveries logged: $(grep -c 'status=deferred' "$PF_LOG" || true)" >>"$HEALTH"
if [ "$(grep -c -E 'warning|fatal|panic' "$PF_LOG" || true)" != 0 ]; then
    grep -E 'warning|fatal|panic' "$PF_LOG" | sed 's/^.*postfix/postfix/' | sort | uniq -c | sort -rn | head -5 | sed 's/^/      /' >>"$HEALTH"
fi
echo "- smtp-sink: $(sink_count) messages received in total (warm-up included); stderr: $(wc -l <"$WORK/sink.stderr") lines" >>"$HEALTH"

# ---------------------------------------------------------------- report
pf() { postconf -c "$PF_CONF" -h "$1"; }
{
cat <<EOF
# End-to-end relay throughput: mta vs Postfix

- date: $(date -Iseconds); host: $(hostname); $(nproc) cores; kernel $(uname -r)
- path: \`smtp-source -> peer -> smtp-sink\` on 127.0.0.1; the clock runs from the start of
  smtp-source until smtp-sink has received the last message of the run.
- mta: \`$MTA_BIN\` ($MTA_COMMIT), RUST_LOG=$MTA_LOG, queue backend sled (default), \`[outbound] relay =
  "127.0.0.1:$SINK_PORT"\` (smarthost, no DNS), \`tls = "disabled"\`, \`max_per_destination\` = the
  limit column, \`max_messages_per_connection\` = ${MTA_MSGS_PER_CONN:-100 (default)}, \`[queue]
  max_concurrent_deliveries\` = 100 (default), idle outbound connections kept 10 s for reuse.
- Postfix $(postconf -h mail_version): dedicated instance ($PF_CONF), \`mynetworks = 127.0.0.0/8\`,
  \`transport_maps = inline:{ sinkN.test=smtpN:[127.0.0.1]:$SINK_PORT }\` with
  \`smtpN_destination_concurrency_limit = N\` (the limit column); \`default_process_limit = 200\`,
  \`initial_destination_concurrency = $(pf initial_destination_concurrency)\` (slow start),
  connection cache: \`smtp_connection_cache_on_demand = $(pf smtp_connection_cache_on_demand)\`,
  \`smtp_connection_cache_time_limit = $(pf smtp_connection_cache_time_limit)\`,
  \`smtp_connection_reuse_count_limit = $(pf smtp_connection_reuse_count_limit)\`,
  \`in_flow_delay = $(pf in_flow_delay)\`; logs every message to $PF_LOG.
- durability: both reply 250 only after fsync. Postfix fsyncs each queue file before 250 (its
  default); mta group-commits (one fdatasync of the spool segment and one sled flush + fsync per
  batch of messages) before 250, and records every delivery result through the same committer.
- load generator: one smtp-source process (HELO, no pipelining, one message per connection, -N:
  one recipient per message). COUNT=$COUNT messages per run (COUNT_LARGE=$COUNT_LARGE for sizes
  >= 16 KB), REPS=$REPS runs per peer, interleaved in the order: ${ORDER[*]}, ...
- sink: smtp-source straight to smtp-sink (no relay): the ceiling of this load generator.
- **msgs/s** = messages / (time from the start of smtp-source until smtp-sink counted the last one).
  accept msgs/s = messages / smtp-source's wall time (the durable 250s).
- at sink = distinct recipients of the run found in smtp-sink's dump / messages sent (each message
  has its own recipient); MISSING if fewer, DUPLICATES if some arrived twice.
- load average at start: \`$LOAD_START\`
- load average at end:   \`$LOAD_END\`

EOF
python3 - "$RAW" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def kb(size): return f"{int(size)//1024} KB"
def sel(peer, size, s, limit=None):
    return [r for r in rows if r["peer"] == peer and int(r["size"]) == size and int(r["sessions"]) == s
            and (limit is None or r["limit"] == limit)]
def med(rs, k="e2e_msgs_per_s"): return statistics.median(float(r[k]) for r in rs) if rs else float("nan")
def spread(rs, k="e2e_msgs_per_s"): return f'{min(float(r[k]) for r in rs):.0f}-{max(float(r[k]) for r in rs):.0f}' if rs else "-"
def f0(x): return "-" if x != x else f"{x:.0f}"
def cnt(rs): return f'{sum(int(r["at_sink"]) for r in rs)}/{sum(int(r["count"]) for r in rs)}' if rs else "-"
configs = []
for r in rows:
    if r["peer"] == "sink": continue
    k = (int(r["size"]), int(r["sessions"]), r["limit"])
    if k not in configs: configs.append(k)
head = ["size", "sessions", "limit per destination", "msgs/run", "mta msgs/s (median)", "postfix msgs/s (median)",
        "**mta/postfix**", "mta accept msgs/s", "postfix accept msgs/s", "sink (ceiling) msgs/s",
        "mta at sink", "postfix at sink", "flags"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for size, s, limit in configs:
    m, p, k = sel("mta", size, s, limit), sel("postfix", size, s, limit), sel("sink", size, s)
    ratio = med(m) / med(p) if m and p else float("nan")
    bad = sorted({f'{r["peer"]} rep {r["rep"]}: {r["flag"]}' for r in m + p + k if r["flag"] != "ok"})
    cells = [kb(size), str(s), limit, (m or p)[0]["count"], f0(med(m)), f0(med(p)),
             "-" if ratio != ratio else f"**{ratio:.2f}**",
             f0(med(m, "accept_msgs_per_s")), f0(med(p, "accept_msgs_per_s")), f0(med(k)),
             cnt(m), cnt(p), "; ".join(bad) or "all delivered once, no errors"]
    print("| " + " | ".join(cells) + " |")
print()
print("Spread (min-max end-to-end msgs/s over the runs), and the connections each peer opened to")
print("smtp-sink per run (median; connections kept idle from an earlier run and reused are not counted):")
print()
print("| size | sessions | limit | mta | postfix | sink | mta connections to the sink | postfix connections to the sink |")
print("|---|---|---|---|---|---|---|---|")
def conns(rs): return f0(med(rs, "sink_connections"))
for size, s, limit in configs:
    m, p = sel('mta', size, s, limit), sel('postfix', size, s, limit)
    print(f"| {kb(size)} | {s} | {limit} | {spread(m)} | {spread(p)} | {spread(sel('sink', size, s))} | {conns(m)} | {conns(p)} |")
print()
print("## Every run")
print()
print("| peer | limit | size | sessions | rep | msgs | accepted after s | accept msgs/s | all at sink after s | **msgs/s** | at sink | duplicates | from other runs | smtp-source error lines | left in Postfix queue | connections to the sink | SYNs dropped | load1 | flag |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f'| {r["peer"]} | {r["limit"]} | {kb(r["size"])} | {r["sessions"]} | {r["rep"]} | {r["count"]} | {r["accept_s"]} | {float(r["accept_msgs_per_s"]):.0f} | {r["e2e_s"]} | {float(r["e2e_msgs_per_s"]):.0f} | {r["at_sink"]} | {r["duplicates"]} | {r["other_runs"]} | {r["smtp_source_error_lines"]} | {r["postfix_left_in_queue"]} | {r["sink_connections"]} | {r["listen_drops"]} | {r["load1"]} | {r["flag"]} |')
PY
echo
echo "## Health"
echo
cat "$HEALTH"
} >"$RESULT_MD"

echo
cat "$RESULT_MD"
echo
log "written: $RESULT_MD (raw data: $RAW)"
