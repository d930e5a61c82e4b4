#!/usr/bin/env bash
# Durable inbound acceptance: `mta serve` versus Postfix, same machine, same run.
#
# Load generator: Postfix's smtp-source (HELO, no pipelining, one message per connection).
# Both peers reply 250 only after the message is on disk (fsync): Postfix fsyncs each
# queue file (its default), mta always makes the message durable before 250.
# Both deliver every message to a Maildir; after each run the script waits for delivery
# to drain and counts the files that arrived.
#
# Sender authentication: every peer receives the same DKIM-signed message (RSA-2048,
# c=relaxed/simple, one file per size, signed by dkimpy with a key from `mta dkim-keygen`,
# sent with smtp-source -F) from HELO client.bench.test. A local dnsmasq, authoritative
# for `test.` on 127.0.0.1:$DNS_PORT, publishes SPF for bench.test and the HELO name
# (ip4:127.0.0.1), DMARC for bench.test (p=none) and the DKIM key; mta asks it through
# `[dns] nameservers`. AUTH_CHECKS=on (the default) runs mta's SPF, DKIM, DMARC and ARC
# checks (all `tag`, mta's default); AUTH_CHECKS=off turns all four off. Postfix checks
# nothing either way.
#
# Anti-abuse defences: the peer `mta-defences` turns every defence of docs/anti-abuse.md
# on, set so that the measured messages pass every one of them (DNS lists that do not list
# 127.0.0.1, their answers cached; a greylisting triplet passed before the run; rate limits
# far above the load, but evaluated), and `mta-nodefences` turns every one off; run them
# with `mta` (the defaults: most defences in tag mode) to see what the defences cost:
#   PEERS="mta-nodefences mta mta-defences" SIZES=1024 SESSIONS="1 20" bash bench/servers/inbound.sh
#
# Nothing is deleted while runs are measured: on this ext4 without a journal, files
# created soon after many deletions search past the freed inodes, so a run that began by
# deleting the previous run's messages measured that. Each run's delivered files are
# renamed into a graveyard (clear_peer), deleted after the last run (cleanup), and the
# first run waits DELETION_QUIET s after any earlier bulk deletion (common.sh). The disk
# must hold every run's messages: check_disk stops at the start if they would not fit.
#
# Run as root:   bash bench/servers/inbound.sh
# See bench/servers/README.md for the environment variables.
set -euo pipefail

# ---------------------------------------------------------------- settings
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

COUNT="${COUNT:-12000}"                  # messages per smtp-source run
COUNT_S1="${COUNT_S1:-$(( COUNT / 4 ))}" # messages per run with 1 session (latency-bound)
REPS="${REPS:-5}"                        # runs per peer and configuration (median reported)
SIZES="${SIZES:-1024 65536}"             # message body sizes in bytes (as smtp-source -l)
SESSIONS="${SESSIONS:-1 20 100}"         # concurrent sessions (smtp-source -s)
# Peers, run interleaved in this order for every repetition:
#   mta      `mta serve`, RUST_LOG=$MTA_LOG (default warn: no per-message log lines)
#   postfix  a dedicated Postfix instance (per-message log lines to $PF_LOG, as always)
#   mta-info a second `mta serve`, RUST_LOG=info (per-message log lines to a file)
#   mta-noauth  another `mta serve` with every sender-authentication check off
#   mta-base another `mta serve` like `mta`, but of the binary $MTA_BASE_BIN (an earlier
#            build, to compare a change with what it changes in the same run)
#   mta-defences    another `mta serve` with every anti-abuse defence on (enforce where the
#            defence has it), set so that the measured messages pass: see mta_defences_config
#   mta-nodefences  another `mta serve` with every anti-abuse defence off
#   sink     smtp-sink: stores nothing, the ceiling of this machine and load generator
# Each mta peer checks the senders as AUTH_CHECKS says (mta-noauth: never).
# Without postfix in PEERS, there is no ratio to Postfix (and no Postfix is started).
PEERS="${PEERS:-mta postfix sink}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-300}"  # max seconds to wait for delivery after a run
STALL_TIMEOUT="${STALL_TIMEOUT:-30}"   # stop waiting when the count has not moved for this long
MTA_LOG="${MTA_LOG:-warn}"             # RUST_LOG of the `mta` peer
PF_PORT="${PF_PORT:-2555}"
MTA_PORT="${MTA_PORT:-2556}"
MTA_INFO_PORT="${MTA_INFO_PORT:-2557}"
MTA_NOAUTH_PORT="${MTA_NOAUTH_PORT:-2559}"
MTA_BASE_PORT="${MTA_BASE_PORT:-2563}"
MTA_BASE_BIN="${MTA_BASE_BIN:-}"         # the binary of the peer mta-base
# PERF_PEER=mta: record a CPU profile (perf record -g) of that peer during each run, saved
# beside the report (it slows the peer: not for the numbers of a comparison); with
# PERF_STAT=1 `perf stat` counters instead (task-clock, context switches, migrations,
# system calls), with PERF_STAT=strace `strace -c` (system calls by name)
MTA_DEFENCES_PORT="${MTA_DEFENCES_PORT:-2560}"
MTA_NODEFENCES_PORT="${MTA_NODEFENCES_PORT:-2561}"
MTA_DEFENCES_METRICS_PORT="${MTA_DEFENCES_METRICS_PORT:-2562}"  # mta-defences' /metrics (the defences' counters)
SINK_PORT="${SINK_PORT:-2558}"
DISK_RESERVE_MB="${DISK_RESERVE_MB:-8192}" # disk space left to everything else at the end of the runs
AUTH_CHECKS="${AUTH_CHECKS:-on}"       # on: mta's [auth_checks] all `tag`; off: all `off`
DNS_PORT="${DNS_PORT:-5354}"           # the local dnsmasq (UDP and TCP on 127.0.0.1)
DNS_TTL="${DNS_TTL:-300}"              # TTL of its records (and of its negative answers)
DNS_LOG="${DNS_LOG:-0}"                # 1: dnsmasq logs every query to $WORK/dnsmasq.log
DOMAIN="${DOMAIN:-maildir.test}"       # recipient domain, local on both peers
RCPT_USER="${RCPT_USER:-benchuser}"    # local part, and the Unix user Postfix delivers to
SENDER="sender@bench.test"
SENDER_DOMAIN="${SENDER#*@}"
HELO="client.$SENDER_DOMAIN"           # smtp-source -M: the HELO name
DKIM_SELECTOR="s1"
RCPT="$RCPT_USER@$DOMAIN"

PF_CONF="${PF_CONF:-/etc/postfix-bench}"         # dedicated Postfix config directory
PF_QUEUE="${PF_QUEUE:-/var/spool/postfix-bench}" # dedicated Postfix queue directory
PF_DATA="${PF_DATA:-/var/lib/postfix-bench}"
PF_LOG="${PF_LOG:-/var/log/postfix-bench.log}"

RESULTS_DIR="$HERE/results"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULT_MD="$RESULTS_DIR/inbound-$STAMP.md"
RAW="$RESULTS_DIR/inbound-$STAMP.raw.tsv"

# shellcheck source=bench/servers/common.sh
. "$HERE/common.sh"

[ "$(id -u)" = 0 ] || die "run as root (installs packages, starts Postfix, adds a local user)"
case $AUTH_CHECKS in on|off) ;; *) die "AUTH_CHECKS must be on or off, not $AUTH_CHECKS" ;; esac

# ---------------------------------------------------------------- prerequisites
install_postfix
command -v python3 >/dev/null || die "python3 is needed for the statistics"
install_dns_and_dkimpy
build_mta

id "$RCPT_USER" >/dev/null 2>&1 || useradd -m -s /usr/sbin/nologin "$RCPT_USER"
RCPT_HOME="$(getent passwd "$RCPT_USER" | cut -d: -f6)"
PF_MAILDIR="$RCPT_HOME/Maildir"
# Where each run's delivered files go until the end (see clear_peer): Postfix's beside its
# Maildir, each mta peer's in $WORK/graveyard/PEER (the same file system as the Maildir).
# One left by an earlier run that was stopped before its end goes now, before anything
# is measured (wait_deletions_settled waits for ext4 after it).
PF_GRAVE="$RCPT_HOME/mta-bench-graveyard"
bulk_delete "$PF_GRAVE"

WORK="$(mktemp -d /var/tmp/mta-bench.XXXXXX)"   # on the real disk, not tmpfs
GRAVE="$WORK/graveyard"
mkdir -p "$RESULTS_DIR"
# Every mta peer runs this copy: the same binary for all of them even if the build
# changes during the run (MTA_BIN_GIVEN is what was given, for the report).
MTA_BIN_GIVEN=$MTA_BIN
mkdir -p "$WORK/bin"
cp "$MTA_BIN" "$WORK/bin/mta"
MTA_BIN="$WORK/bin/mta"

declare -A PORT PID MAILDIRS
PORT[postfix]=$PF_PORT; PORT[mta]=$MTA_PORT; PORT[mta-info]=$MTA_INFO_PORT; PORT[sink]=$SINK_PORT
PORT[mta-noauth]=$MTA_NOAUTH_PORT
PORT[mta-base]=$MTA_BASE_PORT
PORT[mta-defences]=$MTA_DEFENCES_PORT; PORT[mta-nodefences]=$MTA_NODEFENCES_PORT
MAILDIRS[postfix]="$PF_MAILDIR/new $PF_MAILDIR/cur"

# ---------------------------------------------------------------- Postfix
pf_start() {
    pf_stop
    mkdir -p "$PF_CONF"
    { pf_main_cf; printf 'mydestination = %s, localhost\nhome_mailbox = Maildir/\n' "$DOMAIN"; } >"$PF_CONF/main.cf"
    pf_master_cf >"$PF_CONF/master.cf"
    pf_launch
    # Fresh Maildir directories (ext4 directories never shrink after holding many files; the
    # mta Maildir is new in every run). Files left by an earlier run go to the graveyard
    # (clear_peer); rmdir only removes empty directories.
    clear_peer postfix
    rmdir "$PF_MAILDIR/new" "$PF_MAILDIR/cur" 2>/dev/null || true
    mkdir -p "$PF_MAILDIR/new" "$PF_MAILDIR/cur" "$PF_MAILDIR/tmp"
    chown -R "$RCPT_USER:" "$PF_MAILDIR"
    wait_port "$PF_PORT" || die "Postfix does not listen on $PF_PORT (see $PF_LOG)"
}

# ---------------------------------------------------------------- mta
# The anti-abuse sections of the peer `mta-defences` (DIR is its directory): every defence
# on, enforcing where it can, and set so that smtp-source's messages pass each one, as a
# legitimate server's would. What each one does per message here:
# - early talkers: enforce, no greeting delay (smtp-source waits for the greeting and for
#   every reply: it is a polite client); every connection is watched for talking first and
#   for commands sent before a reply.
# - HELO checks: enforce; client.bench.test is a name with a dot, not ours.
# - DNS blocklists: enforce, three IP lists and a sender-domain list under `test.`, which
#   the bench's dnsmasq is authoritative for: 1.0.0.127.blN.test and bench.test.dbl.test
#   are NXDOMAIN (127.0.0.1 and bench.test are not listed), with an SOA, so mta's resolver
#   caches the answers (for DNS_TTL): "lists cached". Asked at every connection (the IP
#   lists) and every MAIL FROM (the sender list), awaited at RCPT.
# - reverse DNS: enforce, require a confirmed name, looked up at every connection; mta's
#   resolver answers 127.0.0.1 from /etc/hosts (a name there, e.g. `localhost`, that
#   resolves back to it: confirmed) without asking dnsmasq.
# - rate limits: every per-IP and per-sender-domain limit on (enforce) at 10,000,000 per
#   second, never met, and `exempt_networks = []`, so that loopback is counted too (it is
#   exempt by default).
# - greylisting: enforce with mta's default times, auto-allowlisting off (0), so that every
#   recipient is looked up by its triplet; the state file is written before mta starts
#   with the bench's triplet (127.0.0.0/24, sender@bench.test, benchuser@maildir.test)
#   already passed, as if it had retried after the delay: "greylist passed".
mta_defences_config() {
    local dir=$1 now
    now=$(date +%s%3N)
    printf 'mta-greylist 1\nt\t127.0.0.0/24\t%s\t%s\t1\t%s\t%s\n' "$now" "$now" "$SENDER" "$RCPT" >"$dir/greylist.state"
    cat <<EOF

[early_talkers]
mode = "enforce"
greeting_delay = "0s"

[helo_checks]
mode = "enforce"

[dnsbl]
mode = "enforce"
threshold = 3
lists = [
  "bl1.test=127.0.0.[2..11]*3",
  "bl2.test*2",
  "bl3.test=127.0.0.2*2",
  "sender:dbl.test=127.0.1.[2..99]*3",
]

[reverse_dns]
mode = "enforce"
require = "confirmed"

[rate_limits]
connections_per_ip = "10000000/1s"
messages_per_ip = "10000000/1s"
recipients_per_ip = "10000000/1s"
messages_per_sender_domain = "10000000/1s"
recipients_per_sender_domain = "10000000/1s"
exempt_networks = []

[greylist]
mode = "enforce"
auto_allowlist_after = 0
state_file = "$dir/greylist.state"

[metrics]
address = "127.0.0.1:$MTA_DEFENCES_METRICS_PORT"
EOF
}

# The anti-abuse sections of the peer `mta-nodefences`: every defence off (the limits on
# failed recipients and logins only count failures, and there are none).
mta_nodefences_config() {
    cat <<EOF

[early_talkers]
mode = "off"

[helo_checks]
mode = "off"

[dnsbl]
mode = "off"

[reverse_dns]
mode = "off"

[rate_limits]
connections_per_ip = "off"
messages_per_ip = "off"
recipients_per_ip = "off"
messages_per_sender_domain = "off"
recipients_per_sender_domain = "off"

[greylist]
mode = "off"
EOF
}

# mta_start PEER LOGLEVEL AUTHMODE [DEFENCES]: its own queue and Maildir under $WORK/PEER;
# DEFENCES: default (mta's defaults, no section), on or off.
mta_start() {
    local peer=$1 level=$2 auth=$3 defences=${4:-default} dir="$WORK/$1" bin=$MTA_BIN
    [ "$peer" = mta-base ] && bin=$MTA_BASE_BIN
    mkdir -p "$dir"
    {
        mta_base_config "$dir" "${PORT[$peer]}"
        cat <<EOF
[limits]
max_connections = 20000
max_connections_per_ip = 1000

[auth_checks]
spf = "$auth"
dkim = "$auth"
dmarc = "$auth"
arc = "$auth"
EOF
        case $defences in
            on) mta_defences_config "$dir" ;;
            off) mta_nodefences_config ;;
        esac
    } >"$dir/mta.toml"
    "$bin" check-config --config "$dir/mta.toml" >/dev/null
    RUST_LOG="$level" "$bin" serve --config "$dir/mta.toml" >"$dir/stdout" 2>"$dir/stderr" &
    PID[$peer]=$!
    MAILDIRS[$peer]="$dir/maildir/$DOMAIN/$RCPT_USER/new"
    wait_port "${PORT[$peer]}" "${PID[$peer]}" || { cat "$dir/stderr" >&2; die "$peer does not listen on ${PORT[$peer]}, or exited (is the port taken by another benchmark run? set MTA_PORT and the other *_PORT variables to free ports)"; }
}

# ---------------------------------------------------------------- DNS and the signed messages
# The number of queries dnsmasq has answered for its zone (its statistics, logged on SIGUSR1).
dns_queries() {
    kill -USR1 "${PID[dns]}" 2>/dev/null || return 0
    sleep 0.3
    { grep -o 'queries for authoritative zones [0-9]*' "$WORK/dnsmasq.log" || true; } | tail -1 | grep -o '[0-9]*$' || true
}

# make_messages: a DKIM key (`mta dkim-keygen --algorithm rsa`: RSA-2048) and, for each
# size, $WORK/msg-SIZE.txt for smtp-source -F: the header fields smtp-source writes itself
# (From, To, Date, Message-Id) and a body like its -l SIZE one (80-byte lines: a digit,
# 77 X, CRLF; SIZE bytes in all), signed by dkimpy (c=relaxed/simple) over the CRLF form
# smtp-source sends, then stored with LF line ends (smtp-source appends CRLF to each line;
# the empty line it adds at the end is not part of a simple-canonicalized body). Each file
# is checked against the published key before it is used.
make_messages() {
    "$MTA_BIN" dkim-keygen --domain "$SENDER_DOMAIN" --selector "$DKIM_SELECTOR" \
        --algorithm rsa --output "$WORK/dkim.key" >"$WORK/dkim-keygen.out"
    DKIM_ZONE_LINE=$(grep '_domainkey' "$WORK/dkim-keygen.out")
    for size in $SIZES; do
        /usr/bin/python3 - "$WORK/dkim.key" "$DKIM_SELECTOR" "$size" "$SENDER" "$RCPT" \
            "$DKIM_ZONE_LINE" "$WORK/msg-$size.txt" <<'PY' || die "cannot make the signed $size-byte message"
import re, sys
import dkim
key, selector, size, sender, rcpt, zone_line, out = sys.argv[1:]
size = int(size)
domain = sender.rsplit("@", 1)[1]
headers = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\n"
           f"Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
           f"Message-Id: <bench.{size}@{domain}>\r\n").encode()
body = bytearray()
n = 0
while len(body) + 80 <= size:
    n += 1
    body += str(n % 10).encode() + b"X" * 77 + b"\r\n"
if size - len(body) >= 3:
    body += b"X" * (size - len(body) - 2) + b"\r\n"
message = headers + b"\r\n" + bytes(body)
with open(key, "rb") as f:
    private = f.read()
signature = dkim.sign(message, selector.encode(), domain.encode(), private,
                      canonicalize=(b"relaxed", b"simple"),
                      include_headers=[b"from", b"to", b"date", b"message-id"])
signed = signature + message
bare = signed.replace(b"\r\n", b"")
assert b"\r" not in bare and b"\n" not in bare, "bare CR or LF"
record = b"".join(re.findall(rb'"([^"]*)"', zone_line.encode()))
assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record), "does not verify"
with open(out, "wb") as f:
    f.write(signed.replace(b"\r\n", b"\n"))
PY
    done
}

# field_of PEER NAME: the first NAME field (unfolded) of one message in PEER's Maildir.
field_of() {
    local file
    # shellcheck disable=SC2086  # MAILDIRS holds one or two directories
    file=$({ find ${MAILDIRS[$1]} -maxdepth 1 -type f 2>/dev/null || true; } | head -1)
    [ -n "$file" ] || return 0
    # awk reads the file itself: a pipe into it would end in SIGPIPE (and, with pipefail,
    # end the script) when awk stops at the header's end of a large message.
    awk -v name="$2:" '
        { sub(/\r$/, "") }
        tolower(substr($0, 1, length(name))) == tolower(name) { on = 1; printf "%s", $0; next }
        on && /^[ \t]/ { sub(/^[ \t]+/, " "); printf "%s", $0; next }
        on || /^$/ { exit }' "$file"
}
# The Authentication-Results field (unfolded) of one message in PEER's Maildir.
auth_results_of() { field_of "$1" Authentication-Results; }

sink_start() {
    smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>"$WORK/sink.stderr" &
    PID[sink]=$!
    wait_port "$SINK_PORT" "${PID[sink]}" || die "smtp-sink does not listen on $SINK_PORT, or exited (is the port taken by another benchmark run? set SINK_PORT to a free port)"
}

cleanup() {
    for p in "${!PID[@]}"; do stop_pid "${PID[$p]}"; done
    pf_stop
    # The last run's messages in the Postfix user's Maildir (the mta ones go with $WORK),
    # then every run's: the graveyards (also with KEEP_WORK=1: they hold only messages).
    [ -n "${PF_MAILDIR:-}" ] && clear_peer postfix
    log "deleting the delivered messages of every run"
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        bulk_delete "${PF_GRAVE:-}" "${GRAVE:-}"
        log "work directory kept: ${WORK:-}"
    else
        bulk_delete "${PF_GRAVE:-}" "${WORK:-}"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- counting
# shellcheck disable=SC2086  # MAILDIRS holds one or two directories
count_peer() { { find ${MAILDIRS[$1]} -maxdepth 1 -type f 2>/dev/null || true; } | wc -l; }
# clear_peer PEER: empties its Maildir directories without deleting anything: each one
# is renamed into the peer's graveyard and made anew, empty (move_aside). The graveyards
# are deleted at the end (cleanup): a deletion here would make the next run's file
# creations search past the freed inodes (see bulk_delete in common.sh).
clear_peer() {
    local dir grave="${GRAVE:-}/$1"
    [ "$1" = postfix ] && grave=$PF_GRAVE
    # shellcheck disable=SC2086  # MAILDIRS holds one or two directories
    for dir in ${MAILDIRS[$1]}; do move_aside "$dir" "$grave"; done
}
# log_lines PEER: the lines in its log so far (the mta peers' stderr, Postfix's maillog).
log_lines() {
    case $1 in
        mta*) wc -l <"$WORK/$1/stderr" ;;
        postfix) wc -l <"$PF_LOG" ;;
        *) echo 0 ;;
    esac
}

# wait_drain PEER EXPECTED START: waits until the Maildir holds EXPECTED messages, or the
# count stops moving for STALL_TIMEOUT seconds, or DRAIN_TIMEOUT passes. Prints
# "count seconds_from_START_to_the_last_change".
wait_drain() {
    local peer=$1 expected=$2 start=$3 n last=-1 now deadline done_at stall_since
    deadline=$(( $(date +%s) + DRAIN_TIMEOUT ))
    stall_since=$(date +%s)
    done_at=$(date +%s.%N)
    while :; do
        n=$(count_peer "$peer")
        now=$(date +%s)
        if [ "$n" != "$last" ]; then last=$n; stall_since=$now; done_at=$(date +%s.%N); fi
        [ "$n" -ge "$expected" ] && break
        [ "$now" -ge "$deadline" ] && break
        [ $(( now - stall_since )) -ge "$STALL_TIMEOUT" ] && break
        sleep 0.2
    done
    echo "$n $(calc "$done_at - $start")"
}

# cpu_ticks PEER: user + system clock ticks of an mta peer so far (0 for the others:
# Postfix is many processes).
cpu_ticks() {
    case $1 in
        mta*) awk '{ print $14 + $15 }' "/proc/${PID[$1]}/stat" 2>/dev/null || echo 0 ;;
        *) echo 0 ;;
    esac
}

# ---------------------------------------------------------------- one run
# run_one PEER SIZE SESSIONS COUNT REP -> appends a line to $RAW
run_one() {
    local peer=$1 size=$2 sessions=$3 count=$4 rep=$5
    local t0 t1 secs rate delivered e2e errfile rc=0 smtp_errors load flag drops0 drops cpu0 cpu lines0 lines
    [ "$peer" = sink ] || clear_peer "$peer"
    sync   # the previous run's deliveries are not flushed on our clock
    lines0=$(log_lines "$peer")
    errfile="$WORK/smtp-source.err"
    load=$(cut -d' ' -f1 /proc/loadavg)
    drops0=$(listen_drops)
    cpu0=$(cpu_ticks "$peer")
    local perf_pid=
    if [ "$peer" = "${PERF_PEER:-}" ]; then
        # A CPU profile of this run, acceptance and delivery (perf report -i FILE).
        if [ "${PERF_STAT:-0}" = strace ]; then
            # The system calls of the run, counted (strace slows the peer much more).
            strace -c -f -p "${PID[$peer]}" \
                -o "$RESULTS_DIR/inbound-$STAMP.$peer-$size-$sessions-$rep.strace" &
        elif [ "${PERF_STAT:-0}" = 1 ]; then
            # Counters instead: context switches and CPU migrations of the run.
            perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter -p "${PID[$peer]}" \
                -o "$RESULTS_DIR/inbound-$STAMP.$peer-$size-$sessions-$rep.perf.stat" &
        else
            perf record -F 999 ${PERF_CALLGRAPH:--g} -p "${PID[$peer]}" \
                -o "$RESULTS_DIR/inbound-$STAMP.$peer-$size-$sessions-$rep.perf.data" 2>/dev/null &
        fi
        perf_pid=$!
        sleep 0.5
    fi
    t0=$(date +%s.%N)
    smtp-source -s "$sessions" -M "$HELO" -F "$WORK/msg-$size.txt" -m "$count" \
        -f "$SENDER" -t "$RCPT" "127.0.0.1:${PORT[$peer]}" >/dev/null 2>"$errfile" || rc=$?
    t1=$(date +%s.%N)
    drops=$(( $(listen_drops) - drops0 ))
    secs=$(calc "$t1 - $t0")
    rate=$(calc "$count / $secs")
    smtp_errors=$(wc -l <"$errfile")
    if [ "$peer" = sink ]; then
        delivered=$count; e2e=$secs   # stores nothing; nothing to count
    else
        read -r delivered e2e < <(wait_drain "$peer" "$count" "$t0")
    fi
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
    fi
    # The server's CPU time (user + system, acceptance and delivery) per message.
    cpu=$(( ( $(cpu_ticks "$peer") - cpu0 ) * 1000000 / $(getconf CLK_TCK) / count ))
    # Its log lines during the run (from the first connection to the last delivery).
    lines=$(( $(log_lines "$peer") - lines0 ))
    flag=ok
    if [ "$delivered" -ne "$count" ] || [ "$rc" -ne 0 ] || [ "$smtp_errors" -ne 0 ]; then
        flag=MISSING
        [ "$delivered" -eq "$count" ] && flag=ERRORS
        log "  !! $peer size=$size s=$sessions rep=$rep: delivered $delivered/$count, smtp-source rc=$rc, $smtp_errors error lines:"
        head -5 "$errfile" | sed 's/^/     /' >&2
        cp "$errfile" "$RESULTS_DIR/inbound-$STAMP.$peer-$size-$sessions-$rep.smtp-source.err"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%.3f\t%.1f\t%s\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$peer" "$size" "$sessions" "$rep" "$count" "$secs" "$rate" "$delivered" "$e2e" \
        "$smtp_errors" "$load" "$flag" "$drops" "$cpu" "$lines" >>"$RAW"
    log "  $(printf '%-8s' "$peer") size=$size s=$sessions rep=$rep: $count msgs in $(printf %.2f "$secs") s = $(printf %5.0f "$rate") msgs/s; delivered $delivered/$count (last after $(printf %.1f "$e2e") s) listen-drops=$drops load1=$load cpu/msg=${cpu}us log-lines=$lines $flag"
}

# ---------------------------------------------------------------- main
log "work dir $WORK; mta $MTA_BIN; PEERS=\"$PEERS\" COUNT=$COUNT COUNT_S1=$COUNT_S1 REPS=$REPS MTA_LOG=$MTA_LOG AUTH_CHECKS=$AUTH_CHECKS"
AUTH_MODE=tag
[ "$AUTH_CHECKS" = off ] && AUTH_MODE=off
make_messages

# ---------------------------------------------------------------- disk space
# Every delivered message stays on the disk until the last run (clear_peer deletes
# nothing): check that they fit, with DISK_RESERVE_MB left for everything else (other
# work on this machine, the queues, Postfix's log). Per message and peer: the message as
# stored (the file with CRLF line ends, plus 2 KB for the fields the peers add) in whole
# 4 KiB blocks, 256 bytes of directory entry; mta-info's log adds 1 KB per message (two
# lines, about 450 bytes).
check_disk() {
    local size s count per bytes msgs n_pf=0 n_mta=0 n_info=0 need_pf=0 need_mta=0 inodes=0
    local peer dev_w dev_p avail_w avail_p iavail reserve=$(( DISK_RESERVE_MB * 1024 * 1024 ))
    for peer in $PEERS; do
        case $peer in sink) ;; postfix) n_pf=1 ;; mta-info) n_mta=$(( n_mta + 1 )); n_info=1 ;; *) n_mta=$(( n_mta + 1 )) ;; esac
    done
    DISK_MSGS=0
    for size in $SIZES; do
        msgs=50   # the warm-up
        for s in $SESSIONS; do
            count=$COUNT; [ "$s" = 1 ] && count=$COUNT_S1
            msgs=$(( msgs + REPS * count ))
        done
        bytes=$(( $(wc -c <"$WORK/msg-$size.txt") + $(wc -l <"$WORK/msg-$size.txt") + 2048 ))
        per=$(( (bytes + 4095) / 4096 * 4096 + 256 ))
        need_pf=$(( need_pf + n_pf * msgs * per ))
        need_mta=$(( need_mta + n_mta * msgs * per + n_info * msgs * 1024 ))
        inodes=$(( inodes + (n_pf + n_mta) * msgs ))
        DISK_MSGS=$(( DISK_MSGS + msgs ))
    done
    DISK_NEED_MB=$(( (need_pf + need_mta) / 1048576 ))
    dev_w=$(stat -c %d "$WORK"); dev_p=$(stat -c %d "$RCPT_HOME")
    avail_w=$(df -B1 --output=avail "$WORK" | tail -1 | tr -d ' ')
    avail_p=$(df -B1 --output=avail "$RCPT_HOME" | tail -1 | tr -d ' ')
    iavail=$(df --output=iavail "$WORK" | tail -1 | tr -d ' ')
    DISK_FREE_MB=$(( avail_w / 1048576 ))
    local advice="lower COUNT (and COUNT_S1) or REPS, or run fewer SIZES, SESSIONS or PEERS (every delivered message is kept until the last run: deleting between runs would be measured)"
    if [ "$dev_w" = "$dev_p" ]; then
        [ $(( need_pf + need_mta + reserve )) -le "$avail_w" ] || die "not enough disk space: $DISK_MSGS messages per peer need about $DISK_NEED_MB MB on $(df --output=target "$WORK" | tail -1) (mta peers $(( need_mta / 1048576 )) MB, Postfix $(( need_pf / 1048576 )) MB), $(( avail_w / 1048576 )) MB are free and DISK_RESERVE_MB=$DISK_RESERVE_MB stay free for everything else: $advice"
    else
        [ $(( need_mta + reserve )) -le "$avail_w" ] || die "not enough disk space: the mta peers' $DISK_MSGS messages each need about $(( need_mta / 1048576 )) MB in $WORK, $(( avail_w / 1048576 )) MB are free and DISK_RESERVE_MB=$DISK_RESERVE_MB stay free: $advice"
        [ $(( need_pf + reserve )) -le "$avail_p" ] || die "not enough disk space: Postfix's $DISK_MSGS messages need about $(( need_pf / 1048576 )) MB in $RCPT_HOME, $(( avail_p / 1048576 )) MB are free and DISK_RESERVE_MB=$DISK_RESERVE_MB stay free: $advice"
    fi
    if [[ "$iavail" =~ ^[0-9]+$ ]] && [ "$iavail" -gt 0 ]; then
        [ $(( inodes + 100000 )) -le "$iavail" ] || die "not enough free inodes: $inodes delivered files, $iavail inodes free: $advice"
    fi
    log "disk: $DISK_MSGS messages per peer kept until the end, about $DISK_NEED_MB MB in all; $DISK_FREE_MB MB free (DISK_RESERVE_MB=$DISK_RESERVE_MB stay free)"
}
check_disk

dns_start
LOAD_START="$(uptime)"
log "uptime: $LOAD_START"
for peer in $PEERS; do
    case $peer in
        mta) mta_start mta "$MTA_LOG" "$AUTH_MODE" ;;
        mta-info) mta_start mta-info info "$AUTH_MODE" ;;
        mta-noauth) mta_start mta-noauth "$MTA_LOG" off ;;
        mta-base)
            [ -x "$MTA_BASE_BIN" ] || die "peer mta-base: set MTA_BASE_BIN to an mta binary"
            mta_start mta-base "$MTA_LOG" "$AUTH_MODE" ;;
        mta-defences) mta_start mta-defences "$MTA_LOG" "$AUTH_MODE" on ;;
        mta-nodefences) mta_start mta-nodefences "$MTA_LOG" "$AUTH_MODE" off ;;
        sink) sink_start ;;
        postfix) pf_start ;;
        *) die "unknown peer $peer" ;;
    esac
done

# Warm-up (not measured): creates the Maildirs, fills mta's DNS cache and wakes every
# server up; 50 messages of each size through every peer. Then what mta's checks made of
# them: with AUTH_CHECKS=on, every size must pass SPF, DKIM and DMARC.
log "warm-up"
AUTH_RESULTS="(no mta peer)"
for size in $SIZES; do
    for peer in $PEERS; do
        [ "$peer" = sink ] || clear_peer "$peer"
        smtp-source -s 5 -M "$HELO" -F "$WORK/msg-$size.txt" -m 50 -f "$SENDER" -t "$RCPT" \
            "127.0.0.1:${PORT[$peer]}" >/dev/null 2>&1 || true
        if [ "$peer" != sink ]; then
            read -r n _ < <(wait_drain "$peer" 50 "$(date +%s.%N)")
            # The defences must let every message of the bench through (a 4yz or 5yz from one
            # of them would make smtp-source report an error and leave a message out).
            [ "$peer" = mta-defences ] && [ "$n" != 50 ] && die "mta-defences delivered $n of 50 messages in the warm-up: a defence refused some (see $WORK/mta-defences/stderr)"
        fi
    done
    for peer in mta mta-info mta-defences mta-nodefences; do
        [[ " $PEERS " == *" $peer "* ]] || continue
        results=$(auth_results_of "$peer")
        [ -n "$results" ] || results="(no Authentication-Results field)"
        log "a $size-byte message delivered by $peer: $results"
        [ "$AUTH_RESULTS" = "(no mta peer)" ] && AUTH_RESULTS=$results
        if [ "$peer" = mta-defences ]; then
            # What the defences left in the message: the client's confirmed name in
            # Received:, and no X-DNSBL field (no list answered for 127.0.0.1 or bench.test).
            DEFENCES_RECEIVED=$(field_of mta-defences Received)
            log "its Received: field: $DEFENCES_RECEIVED"
            [ -z "$(field_of mta-defences X-DNSBL)" ] || die "mta-defences added X-DNSBL: $(field_of mta-defences X-DNSBL)"
        fi
        if [ "$AUTH_CHECKS" = on ]; then
            for verdict in "spf=pass" "dkim=pass" "dmarc=pass"; do
                [[ "$results" == *"$verdict"* ]] || die "no $verdict in $peer's Authentication-Results: the setup is wrong"
            done
        fi
    done
done
DNS_QUERIES_START=$(dns_queries)
# The defences' counters before the measured runs (mta-defences' /metrics).
defence_metrics() {
    [[ " $PEERS " == *" mta-defences "* ]] || return 0
    /usr/bin/python3 - "$MTA_DEFENCES_METRICS_PORT" <<'PY' || true
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
keep = ("mta_smtp_early_talkers_total", "mta_smtp_helo_checks_total", "mta_dnsbl_", "mta_rdns_",
        "mta_smtp_rate_limit_", "mta_smtp_greylist_", "mta_smtp_refusals_total")
for line in text.splitlines():
    if line.startswith(keep):
        print(line)
PY
}
[[ " $PEERS " == *" mta-defences "* ]] && defence_metrics >"$WORK/defence-metrics.start"

# The deletions before the first run (a graveyard of an earlier run, Postfix's leftover
# queue files, an earlier run's cleanup) must not be measured either.
PAUSED=$(wait_deletions_settled)

printf 'peer\tsize\tsessions\trep\tcount\tseconds\tmsgs_per_s\tdelivered\tall_delivered_after_s\tsmtp_source_error_lines\tload1\tflag\tlisten_drops\tcpu_us_per_msg\tlog_lines\n' >"$RAW"
for size in $SIZES; do
    for s in $SESSIONS; do
        count=$COUNT
        [ "$s" = 1 ] && count=$COUNT_S1
        log "size=$size sessions=$s count=$count  ($(uptime | sed 's/.*load/load/'))"
        for rep in $(seq "$REPS"); do
            for peer in $PEERS; do
                run_one "$peer" "$size" "$s" "$count" "$rep"
            done
        done
    done
done
LOAD_END="$(uptime)"
log "uptime: $LOAD_END"
DNS_QUERIES_END=$(dns_queries)
[[ " $PEERS " == *" mta-defences "* ]] && defence_metrics >"$WORK/defence-metrics.end"

# ---------------------------------------------------------------- health
HEALTH="$WORK/health.md"
: >"$HEALTH"
for peer in mta mta-base mta-info mta-noauth mta-defences mta-nodefences; do
    [[ " $PEERS " == *" $peer "* ]] || continue
    dir="$WORK/$peer"
    alive=yes; kill -0 "${PID[$peer]}" 2>/dev/null || alive="NO (it exited)"
    rss=$(awk '/VmRSS|VmHWM/ { printf "%s %d MB; ", $1, $2/1024 }' "/proc/${PID[$peer]}/status" 2>/dev/null || true)
    warns=$(grep -E ' (WARN|ERROR) ' "$dir/stderr" | grep -v 'running as root' | grep -vc 'no \[tls\]' || true)
    lines=$(wc -l <"$dir/stderr")
    echo "- $peer: still running at the end: $alive; $rss log: $lines lines, $warns WARN/ERROR (besides the warnings about no [tls] and running as root); queue directory $(du -sh "$dir/queue" | cut -f1)" >>"$HEALTH"
    if [ "$warns" != 0 ]; then
        cp "$dir/stderr" "$RESULTS_DIR/inbound-$STAMP.$peer.stderr"
        echo "  (log copied to results/inbound-$STAMP.$peer.stderr; first lines below)" >>"$HEALTH"
        grep -E ' (WARN|ERROR) ' "$dir/stderr" | grep -v 'no \[tls\]' | grep -v 'running as root' | head -5 | sed 's/^/      /' >>"$HEALTH"
    fi
done
[[ " $PEERS " == *" postfix "* ]] && echo "- postfix: $(grep -c -E 'warning|fatal|panic' "$PF_LOG" || true) warning/fatal lines in $PF_LOG; still queued: $(pf_queue_len)" >>"$HEALTH"
if [[ " $PEERS " == *" mta-defences "* ]]; then
    {
        echo "- mta-defences: what its defences counted during the measured runs (/metrics at the end minus at the start; a counter absent at the start counts from 0):"
        echo
        /usr/bin/python3 - "$WORK/defence-metrics.start" "$WORK/defence-metrics.end" <<'PY'
import sys
def read(path):
    out = {}
    for line in open(path):
        name, _, value = line.rstrip().rpartition(" ")
        try: out[name] = float(value)
        except ValueError: pass
    return out
start, end = read(sys.argv[1]), read(sys.argv[2])
still = []
for name, value in end.items():
    gauge = name.startswith(("mta_smtp_rate_limit_tracked", "mta_smtp_greylist_entries", "mta_smtp_greylist_clients"))
    d = value if gauge else value - start.get(name, 0)
    if gauge or d:
        print(f"      {name} {'= ' if gauge else '+'}{d:.0f}")
    else:
        still.append(name.split("{")[0])
if still:
    print(f"      and +0 for the {len(still)} other counters (every hit, refusal, error, deferral, early talker and HELO finding): {', '.join(sorted(set(still)))}")
PY
    } >>"$HEALTH"
fi
echo "- dnsmasq: $(( ${DNS_QUERIES_END:-0} - ${DNS_QUERIES_START:-0} )) queries answered during the measured runs (${DNS_QUERIES_END:-?} in all, with the setup check and the warm-up; TTL $DNS_TTL s)" >>"$HEALTH"

# ---------------------------------------------------------------- report
{
cat <<EOF
# Inbound durable acceptance: mta vs Postfix (sender authentication $AUTH_CHECKS)

- date: $(date -Iseconds); host: $(hostname); $(nproc) cores; kernel $(uname -r)
- mta: \`$MTA_BIN_GIVEN\` (every mta peer runs one copy of it; peer \`mta\`: RUST_LOG=$MTA_LOG; peer \`mta-info\`: RUST_LOG=info), queue backend sled (default), Maildir delivery$([[ " $PEERS " == *" mta-base "* ]] && echo "; peer \`mta-base\`: \`$MTA_BASE_BIN\`, otherwise like \`mta\`")
- Postfix $(postconf -h mail_version): dedicated instance ($PF_CONF), Maildir delivery by local(8), logging every message to $PF_LOG
- durability: both reply 250 only after fsync. Postfix fsyncs each queue file before 250 (its
  default); mta makes every message durable before 250 (group commit: one fsync may cover several
  messages). Both fsync the delivered Maildir file as well.
- sink: smtp-sink stores nothing; it is the ceiling of this machine with this load generator.
- sender authentication: AUTH_CHECKS=$AUTH_CHECKS (mta \`[auth_checks]\` spf, dkim, dmarc, arc = \`$AUTH_MODE\`;
  Postfix checks nothing). Every peer gets the same message file per size (smtp-source -F,
  HELO $HELO, MAIL FROM $SENDER), DKIM-signed with RSA-2048 (c=relaxed/simple, by dkimpy):
  $(for size in $SIZES; do printf '%s KB body: %s bytes on the wire; ' "$(( size / 1024 ))" "$(( $(wc -c <"$WORK/msg-$size.txt") + $(wc -l <"$WORK/msg-$size.txt") ))"; done)
  DNS from dnsmasq on 127.0.0.1:$DNS_PORT (\`[dns] nameservers\`), authoritative for \`test.\`, TTL $DNS_TTL s:
  SPF \`v=spf1 ip4:127.0.0.1 -all\` for $SENDER_DOMAIN and $HELO, \`_dmarc.$SENDER_DOMAIN\` \`v=DMARC1; p=none\`,
  the key at \`$DKIM_SELECTOR._domainkey.$SENDER_DOMAIN\`.
- a message mta delivered in the warm-up (${SIZES%% *}-byte body): \`$AUTH_RESULTS\`
- load generator: smtp-source -F (HELO, no pipelining, one message per connection, no -d), one process.
  COUNT=$COUNT messages per run (COUNT_S1=$COUNT_S1 with 1 session), REPS=$REPS runs per peer,
  interleaved in the order: $PEERS, $PEERS, ...
- msgs/s = messages / wall time of smtp-source (acceptance, the durable 250). e2e = messages / time
  from the start of the run until the last message was in the Maildir (polled every 0.2 s).
- delivered = files counted in the Maildir after each run, summed over the runs / messages sent.
- CPU µs/msg (mta peers) = user + system time of the mta process from the start of the run until the
  last message was in the Maildir, per message. log lines/msg = lines the peer's log grew by in that
  time, per message (mta peers: their stderr, a file; \`mta\` and \`mta-info\` differ only in RUST_LOG;
  Postfix: $PF_LOG).
- nothing is deleted while runs are measured: before each run the peer's Maildir \`new/\` (Postfix:
  \`new/\` and \`cur/\`) is renamed into a graveyard and made anew; the graveyards are deleted after
  the last run (ext4 without a journal makes every file created soon after many deletions search
  past the freed inodes). $DISK_MSGS messages per peer kept, about $DISK_NEED_MB MB in all
  ($DISK_FREE_MB MB were free). Waited ${PAUSED:-0} s before the first run for earlier deletions
  (DELETION_QUIET=$DELETION_QUIET s after the last one).
$(if [[ " $PEERS " == *" mta-defences "* ]] || [[ " $PEERS " == *" mta-nodefences "* ]]; then cat <<DEF
- anti-abuse defences (docs/anti-abuse.md): \`mta-defences\` turns every one on, enforcing, set so that
  the bench's messages pass: early talkers (no greeting delay), HELO checks, DNS blocklists (three IP
  lists and a sender-domain list under \`test.\`, threshold 3: NXDOMAIN for 127.0.0.1 and bench.test,
  cached by mta's resolver for $DNS_TTL s), reverse DNS (require a confirmed name), rate limits (every
  per-IP and per-sender-domain limit at 10,000,000/s, \`exempt_networks = []\`), greylisting (the
  triplet passed in the state file before the start, auto-allowlisting off). \`mta-nodefences\` turns
  every one off. \`mta\` has mta's defaults: early talkers, HELO checks and reverse DNS in tag mode,
  no DNS lists, rate limits that exempt 127.0.0.0/8, no greylisting.
- Received: field of a message mta-defences delivered in the warm-up: \`${DEFENCES_RECEIVED:-}\`
DEF
fi)
- load average at start: \`$LOAD_START\`
- load average at end:   \`$LOAD_END\`

EOF
python3 - "$RAW" "$PEERS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
peers = sys.argv[2].split()
stores = [p for p in peers if p != "sink"]
others = [p for p in peers if p not in ("postfix",)] if "postfix" in peers else []
def kb(size): return f"{int(size)//1024} KB"
configs = []
for r in rows:
    k = (int(r["size"]), int(r["sessions"]))
    if k not in configs: configs.append(k)
def sel(p, size, s): return [r for r in rows if r["peer"] == p and int(r["size"]) == size and int(r["sessions"]) == s]
def med(rs): return statistics.median(float(r["msgs_per_s"]) for r in rs) if rs else float("nan")
def e2e(rs): return statistics.median(int(r["count"]) / float(r["all_delivered_after_s"]) for r in rs) if rs else float("nan")
def spread(rs): return f'{min(float(r["msgs_per_s"]) for r in rs):.0f}-{max(float(r["msgs_per_s"]) for r in rs):.0f}' if rs else "-"
head = ["size", "sessions", "msgs/run"]
head += [f"{p} msgs/s (median)" for p in peers]
head += [f"{p}/postfix" for p in others]
head += [f"{p} e2e msgs/s" for p in stores]
mtas = [p for p in peers if p.startswith("mta")]
loggers = mtas + [p for p in peers if p == "postfix"]
head += [f"{p} CPU µs/msg" for p in mtas]
head += [f"{p} log lines/msg" for p in loggers]
head += [f"{p} delivered" for p in stores]
head += ["flags"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for size, s in configs:
    pf = med(sel("postfix", size, s))
    cells = [kb(size), str(s), sel(peers[0], size, s)[0]["count"]]
    cells += [f"{med(sel(p, size, s)):.0f}" for p in peers]
    cells += [f"**{med(sel(p, size, s)) / pf:.2f}**" if p == "mta" else f"{med(sel(p, size, s)) / pf:.2f}" for p in others]
    cells += [f"{e2e(sel(p, size, s)):.0f}" for p in stores]
    cells += [f'{statistics.median(int(r["cpu_us_per_msg"]) for r in sel(p, size, s)):.0f}' for p in mtas]
    cells += [f'{sum(int(r.get("log_lines") or 0) for r in sel(p, size, s)) / sum(int(r["count"]) for r in sel(p, size, s)):.2f}' for p in loggers]
    cells += [f'{sum(int(r["delivered"]) for r in sel(p, size, s))}/{sum(int(r["count"]) for r in sel(p, size, s))}' for p in stores]
    bad = sorted({f'{r["peer"]} rep {r["rep"]}: {r["flag"]}' for p in peers for r in sel(p, size, s) if r["flag"] != "ok"})
    cells.append("; ".join(bad) or "all delivered, no errors")
    print("| " + " | ".join(cells) + " |")
print()
print("Spread (min-max msgs/s over the runs):")
print()
print("| size | sessions | " + " | ".join(peers) + " |")
print("|" + "---|" * (2 + len(peers)))
for size, s in configs:
    print(f"| {kb(size)} | {s} | " + " | ".join(spread(sel(p, size, s)) for p in peers) + " |")
mtas = [p for p in peers if p.startswith("mta")]
if mtas:
    print()
    print("mta's CPU time (user + system, receiving and delivering) per message, µs (median over the runs):")
    print()
    print("| size | sessions | " + " | ".join(mtas) + " |")
    print("|" + "---|" * (2 + len(mtas)))
    for size, s in configs:
        print(f"| {kb(size)} | {s} | " + " | ".join(f'{statistics.median(int(r["cpu_us_per_msg"]) for r in sel(p, size, s)):.0f}' for p in mtas) + " |")
# The defences' cost: mta-defences against each mta peer without them (mta-nodefences:
# all off; mta: mta's defaults), at the same size and sessions. The runs are interleaved,
# so rep N of each peer ran side by side: "paired" is the range of the per-rep differences.
bases = [p for p in ("mta-nodefences", "mta") if p in peers]
if "mta-defences" in peers and bases:
    def cpu(rs): return statistics.median(int(r["cpu_us_per_msg"]) for r in rs)
    print()
    print("The anti-abuse defences' cost: mta-defences (every defence on, the lists cached, the greylisting triplet passed) minus a peer without them (median over the runs; CPU = user + system time of the mta process, receiving and delivering, per message):")
    print()
    print("| size | sessions | without | msgs/s without | msgs/s with | acceptance rate change | CPU µs/msg without | CPU µs/msg with | added CPU µs/msg | paired, per rep | added CPU / CPU without | all delivered, none refused |")
    print("|" + "---|" * 12)
    for size, s in configs:
        on = sel("mta-defences", size, s)
        for b in bases:
            off = sel(b, size, s)
            if not on or not off: continue
            d = cpu(on) - cpu(off)
            pairs = sorted(int(a["cpu_us_per_msg"]) - int(z["cpu_us_per_msg"]) for a in on for z in off if a["rep"] == z["rep"])
            ok = all(r["flag"] == "ok" for r in on + off)
            print(f'| {kb(size)} | {s} | {b} | {med(off):.0f} | {med(on):.0f} | {100 * (med(on) / med(off) - 1):+.1f} % '
                  f'| {cpu(off):.0f} | {cpu(on):.0f} | {d:+.0f} | {pairs[0]:+d} to {pairs[-1]:+d} | {100 * d / cpu(off):+.1f} % '
                  f'| {"yes" if ok else "NO"} |')
print()
print("## Every run")
print()
print("| peer | size | sessions | rep | msgs | seconds | msgs/s | delivered | last delivery after s | smtp-source error lines | SYNs dropped (accept queue full) | load1 | server CPU µs/msg (mta) | flag | log lines |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f'| {r["peer"]} | {kb(r["size"])} | {r["sessions"]} | {r["rep"]} | {r["count"]} | {r["seconds"]} | {float(r["msgs_per_s"]):.0f} | {r["delivered"]} | {r["all_delivered_after_s"]} | {r["smtp_source_error_lines"]} | {r["listen_drops"]} | {r["load1"]} | {r["cpu_us_per_msg"] if r["peer"].startswith("mta") else "-"} | {r["flag"]} | {r.get("log_lines", "-") if r["peer"] != "sink" else "-"} |')
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
