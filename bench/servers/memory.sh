#!/usr/bin/env bash
# Memory for large messages: peak memory of `mta serve` and of Postfix while 1, then 30,
# clients each send a 40 MB message at once, same machine, same run.
#
# Every peer gets the same DKIM-signed 40 MB message (RSA-2048, c=relaxed/simple, signed
# by dkimpy with a key from `mta dkim-keygen`) from Python's smtplib, one connection per
# message, all started together. mta checks SPF, DKIM (over the whole body), DMARC and ARC
# against a local dnsmasq (its defaults: `tag`) and delivers to a Maildir; Postfix delivers
# to a Maildir and checks nothing. The script waits until every message is in its
# Maildir, so delivery's memory is measured too.
#
# What is measured, sampled every 20 ms from /proc while the messages arrive and are
# delivered:
#   mta      VmRSS (resident memory: private memory plus the pages of files it has
#            mapped, the page cache of the spool files included), RssAnon (private memory
#            alone: what no other process could use) and VmHWM (the kernel's own peak of
#            VmRSS, reset before each case through /proc/PID/clear_refs).
#   postfix  the sum of VmRSS over the instance's processes (master and all its children:
#            smtpd, cleanup, qmgr, local, ...), shared libraries counted once per process,
#            and the sum of RssAnon.
#
# Run as root:   bash bench/servers/memory.sh
# Environment:   MTA_BIN (skip the build), SIZE_MB (40), CLIENTS ("1 30"), REPS (3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

SIZE_MB="${SIZE_MB:-40}"
CLIENTS="${CLIENTS:-1 30}"
REPS="${REPS:-3}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-600}"
PF_PORT="${PF_PORT:-2565}"
MTA_PORT="${MTA_PORT:-2566}"
DNS_PORT="${DNS_PORT:-5364}"
DNS_TTL=300
DNS_LOG=0
DOMAIN="maildir.test"
RCPT_USER="${RCPT_USER:-benchuser}"
SENDER="sender@bench.test"
SENDER_DOMAIN="${SENDER#*@}"
HELO="client.$SENDER_DOMAIN"
DKIM_SELECTOR="s1"
RCPT="$RCPT_USER@$DOMAIN"

PF_CONF="${PF_CONF:-/etc/postfix-bench}"
PF_QUEUE="${PF_QUEUE:-/var/spool/postfix-bench}"
PF_DATA="${PF_DATA:-/var/lib/postfix-bench}"
PF_LOG="${PF_LOG:-/var/log/postfix-bench.log}"

RESULTS_DIR="$HERE/results"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULT_MD="$RESULTS_DIR/memory-$STAMP.md"

# shellcheck source=bench/servers/common.sh
. "$HERE/common.sh"

[ "$(id -u)" = 0 ] || die "run as root (installs packages, starts Postfix, adds a local user)"
install_postfix
install_dns_and_dkimpy
build_mta
id "$RCPT_USER" >/dev/null 2>&1 || useradd -m -s /usr/sbin/nologin "$RCPT_USER"
PF_MAILDIR="$(getent passwd "$RCPT_USER" | cut -d: -f6)/Maildir"

WORK="$(mktemp -d /var/tmp/mta-memory.XXXXXX)"
mkdir -p "$RESULTS_DIR"
declare -A PID
cleanup() {
    for p in "${!PID[@]}"; do stop_pid "${PID[$p]}"; done
    pf_stop
    rm -rf "$PF_MAILDIR/new" "$PF_MAILDIR/cur" "$PF_MAILDIR/tmp"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the message and DNS
"$MTA_BIN" dkim-keygen --domain "$SENDER_DOMAIN" --selector "$DKIM_SELECTOR" \
    --algorithm rsa --output "$WORK/dkim.key" >"$WORK/dkim-keygen.out"
DKIM_ZONE_LINE=$(grep '_domainkey' "$WORK/dkim-keygen.out")
log "making the signed ${SIZE_MB} MB message"
/usr/bin/python3 - "$WORK/dkim.key" "$DKIM_SELECTOR" "$SIZE_MB" "$SENDER" "$RCPT" \
    "$DKIM_ZONE_LINE" "$WORK/message.eml" <<'PY' || die "cannot make the message"
import re, sys
import dkim
key, selector, size_mb, sender, rcpt, zone_line, out = sys.argv[1:]
domain = sender.rsplit("@", 1)[1]
headers = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: large\r\n"
           f"Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
           f"Message-Id: <large@{domain}>\r\n").encode()
line = b"X" * 76 + b"\r\n"
body = line * (int(size_mb) * 1_000_000 // len(line))
message = headers + b"\r\n" + body
with open(key, "rb") as f:
    private = f.read()
signature = dkim.sign(message, selector.encode(), domain.encode(), private,
                      canonicalize=(b"relaxed", b"simple"),
                      include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
signed = signature + message
record = b"".join(re.findall(rb'"([^"]*)"', zone_line.encode()))
assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record), "does not verify"
with open(out, "wb") as f:
    f.write(signed)
PY
dns_start

# ---------------------------------------------------------------- the peers
pf_start() {
    pf_stop
    mkdir -p "$PF_CONF"
    { pf_main_cf
      printf 'mydestination = %s, localhost\nhome_mailbox = Maildir/\n' "$DOMAIN"
      printf 'message_size_limit = %s\nmailbox_size_limit = 0\n' "$(( 64 * 1024 * 1024 ))"
    } >"$PF_CONF/main.cf"
    pf_master_cf >"$PF_CONF/master.cf"
    pf_launch
    mkdir -p "$PF_MAILDIR/new" "$PF_MAILDIR/cur" "$PF_MAILDIR/tmp"
    chown -R "$RCPT_USER:" "$PF_MAILDIR"
    wait_port "$PF_PORT" || die "Postfix does not listen on $PF_PORT (see $PF_LOG)"
}

mta_start() {
    mkdir -p "$WORK/mta"
    {
        mta_base_config "$WORK/mta" "$MTA_PORT"
        cat <<EOF
[limits]
max_message_size = $(( 64 * 1024 * 1024 ))
max_connections_per_ip = 1000
EOF
    } >"$WORK/mta/mta.toml"
    "$MTA_BIN" check-config --config "$WORK/mta/mta.toml" >/dev/null
    RUST_LOG=warn "$MTA_BIN" serve --config "$WORK/mta/mta.toml" >"$WORK/mta/stdout" 2>"$WORK/mta/stderr" &
    PID[mta]=$!
    wait_port "$MTA_PORT" "${PID[mta]}" || { cat "$WORK/mta/stderr" >&2; die "mta does not listen on $MTA_PORT, or exited (is the port taken by another benchmark run? set MTA_PORT to a free port)"; }
}

pf_start
mta_start

maildir_of() {
    case $1 in
        mta) echo "$WORK/mta/maildir/$DOMAIN/$RCPT_USER/new" ;;
        postfix) echo "$PF_MAILDIR/new" ;;
    esac
}

# The processes of a peer: mta's one, or Postfix's master and every descendant.
pids_of() {
    case $1 in
        mta) echo "${PID[mta]}" ;;
        postfix)
            local master
            master=$(head -1 "$PF_QUEUE/pid/master.pid" 2>/dev/null | tr -d ' ')
            [ -n "$master" ] || return 0
            ps -e -o pid=,ppid= | awk -v root="$master" '
                { parent[$1] = $2 }
                END { for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]; if (q == root) print p } }'
            ;;
    esac
}

# sample PEER OUT: every 20 ms, "rss_kb anon_kb" summed over the peer's processes, until
# $WORK/stop-sampling exists.
sample() {
    local peer=$1 out=$2
    : >"$out"
    while [ ! -e "$WORK/stop-sampling" ]; do
        # shellcheck disable=SC2046
        awk '/^VmRSS:/ { r += $2 } /^RssAnon:/ { a += $2 } END { print r + 0, a + 0 }' \
            $(pids_of "$peer" | sed 's|.*|/proc/&/status|') /dev/null 2>/dev/null >>"$out" || true
        sleep 0.02
    done
}

# run_case PEER CLIENTS REP -> one line of results
run_case() (
    # A subshell: its EXIT trap is its own.
    local peer=$1 clients=$2 rep=$3 port dir start secs delivered
    case $peer in mta) port=$MTA_PORT ;; postfix) port=$PF_PORT ;; esac
    dir=$(maildir_of "$peer")
    find "$dir" -maxdepth 1 -type f -delete 2>/dev/null || true
    sync
    echo 3 >/proc/sys/vm/drop_caches
    [ "$peer" = mta ] && echo 5 >"/proc/${PID[mta]}/clear_refs"
    rm -f "$WORK/stop-sampling"
    # However this case ends, the sampler stops (and holds no pipe open meanwhile).
    trap 'touch "$WORK/stop-sampling"' EXIT
    sample "$peer" "$WORK/samples" >/dev/null &
    local sampler=$!
    start=$(date +%s.%N)
    /usr/bin/python3 - "$port" "$clients" "$WORK/message.eml" "$SENDER" "$RCPT" <<'PY' || die "$peer refused a message"
import smtplib, sys, threading
port, clients, path, sender, rcpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
message = open(path, "rb").read()
errors = []
barrier = threading.Barrier(clients)
def send():
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.bench.test", timeout=600) as s:
            barrier.wait()
            s.sendmail(sender, [rcpt], message)
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=send) for _ in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("; ".join(errors[:3]))
PY
    local accepted
    accepted=$(calc "$(date +%s.%N) - $start")
    local deadline=$(( $(date +%s) + DRAIN_TIMEOUT ))
    while :; do
        delivered=$({ find "$dir" -maxdepth 1 -type f 2>/dev/null || true; } | wc -l)
        [ "$delivered" -ge "$clients" ] || [ "$(date +%s)" -ge "$deadline" ] && break
        sleep 0.1
    done
    secs=$(calc "$(date +%s.%N) - $start")
    touch "$WORK/stop-sampling"
    wait "$sampler" 2>/dev/null || true
    local peak_rss peak_anon hwm=-
    peak_rss=$(awk 'BEGIN { m = 0 } $1 > m { m = $1 } END { printf "%.0f", m / 1024 }' "$WORK/samples")
    peak_anon=$(awk 'BEGIN { m = 0 } $2 > m { m = $2 } END { printf "%.0f", m / 1024 }' "$WORK/samples")
    [ "$peer" = mta ] && hwm=$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/${PID[mta]}/status")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$peer" "$clients" "$rep" \
        "$peak_rss" "$peak_anon" "$hwm" "$accepted" "$secs" "$delivered"
)

RAW="$WORK/raw.tsv"
: >"$RAW"
for clients in $CLIENTS; do
    for rep in $(seq "$REPS"); do
        for peer in mta postfix; do
            log "$peer: $clients x ${SIZE_MB} MB (run $rep of $REPS)"
            run_case "$peer" "$clients" "$rep" | tee -a "$RAW" >&2
        done
    done
done

# ---------------------------------------------------------------- report (medians)
{
    echo "# Memory for ${SIZE_MB} MB messages: mta vs Postfix ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "\`bash bench/servers/memory.sh\` (CLIENTS=\"$CLIENTS\", REPS=$REPS): each client sends one"
    echo "DKIM-signed ${SIZE_MB} MB message, all at once; the case ends when every message is in"
    echo "the Maildir. Medians of $REPS runs; MB = 2^20 bytes. mta's RSS includes the spool"
    echo "files it maps (page cache the kernel can drop); its anonymous memory is its own."
    echo
    echo "| clients | peer | peak RSS (MB) | peak anonymous (MB) | VmHWM (MB) | accepted (s) | delivered (s) | messages |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    python3 - "$RAW" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cases = {}
for peer, clients, rep, rss, anon, hwm, accepted, secs, delivered in rows:
    cases.setdefault((int(clients), peer), []).append((rss, anon, hwm, accepted, secs, delivered))
med = lambda xs: statistics.median(float(x) for x in xs)
for (clients, peer) in sorted(cases, key=lambda k: (k[0], k[1] != "mta")):
    runs = cases[(clients, peer)]
    col = lambda i: [r[i] for r in runs]
    hwm = "-" if col(2)[0] == "-" else f"{med(col(2)):.0f}"
    print(f"| {clients} | {peer} | {med(col(0)):.0f} | {med(col(1)):.0f} | {hwm} | "
          f"{med(col(3)):.1f} | {med(col(4)):.1f} | {min(int(d) for d in col(5))}/{clients} |")
PY
    echo
    echo "Raw (peer, clients, run, peak RSS MB, peak anon MB, VmHWM MB, accepted s, delivered s, messages):"
    echo
    echo '```text'
    cat "$RAW"
    echo '```'
} >"$RESULT_MD"
cat "$RESULT_MD"
log "report: $RESULT_MD"
