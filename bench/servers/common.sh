# shellcheck shell=bash
# Shared by inbound.sh, relay.sh and memory.sh (sourced, not run): the checkout's root
# ($ROOT), logging, process and port helpers, the dedicated Postfix instance they
# compare against, and the start of mta's configuration.
# The caller sets PF_CONF, PF_QUEUE, PF_DATA, PF_LOG and PF_PORT first.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# The kernel's count of SYNs dropped because a listener's accept queue was full (system-wide).
listen_drops() { awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "ListenDrops") c = i; h = 1 } else print $c }' /proc/net/netstat; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Stops a process: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# Waits up to 20 s for something to listen on 127.0.0.1:PORT.
wait_port() {
    # wait_port PORT [PID]: until something listens on 127.0.0.1:PORT. With PID, that
    # process must still run once it does: a server that cannot bind because another
    # program (another benchmark run) holds the port exits, and the port answering is
    # then someone else's.
    local port=$1 pid=${2:-}
    for _ in $(seq 200); do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            # A moment for a server that lost the port to exit.
            if [ -n "$pid" ]; then sleep 0.2; kill -0 "$pid" 2>/dev/null || return 1; fi
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Postfix provides the peer and the load tools (smtp-source, smtp-sink).
install_postfix() {
    if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v postfix >/dev/null; then
        log "installing postfix (provides smtp-source and smtp-sink)"
        echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y postfix
    fi
}

# dnsmasq serves the sender's DNS records; dkimpy (Debian's python3-dkim, for
# /usr/bin/python3) signs the message files.
install_dns_and_dkimpy() {
    if ! command -v dnsmasq >/dev/null || ! /usr/bin/python3 -c 'import dkim' 2>/dev/null; then
        log "installing dnsmasq-base and python3-dkim"
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y dnsmasq-base python3-dkim >&2
    fi
}

# Sets MTA_BIN: as given, or a release build of this checkout ($ROOT).
build_mta() {
    if [ -z "${MTA_BIN:-}" ]; then
        log "building mta (cargo build --release -p mta-bin)"
        (cd "$ROOT" && cargo build --release -p mta-bin) >&2
        MTA_BIN="$ROOT/target/release/mta"
    fi
    [ -x "$MTA_BIN" ] || die "no mta binary at $MTA_BIN"
}

pf_stop() { postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true; }

# ---------------------------------------------------------------- deleting without measuring it
# This disk is ext4 without a journal. There, ext4 does not reuse an inode freed less than
# 60 s ago (360 s while its inode table block is dirty): every file created in a block
# group with many recently freed inodes searches past them, reading each one's record
# (`ext4_create` -> `recently_deleted` in a profile), and other creators in the directory
# spin on its lock meanwhile. A run that starts right after many deletions (a previous
# run's delivered files, say) pays for them: measured with a Python loop that creates,
# writes and renames 1 KB files in one directory (what a Maildir delivery does), 2000
# files after 14000 were deleted: 800-900 µs of CPU per file right after the deletion and
# 30 s after it, 350 µs 65 s after it, 410 µs with nothing deleted. So the scripts
# delete nothing while they measure (they move what they would delete aside, a rename),
# delete it all at the end (bulk_delete), and wait DELETION_QUIET seconds after the last
# bulk deletion before the first measured run (wait_deletions_settled), also after one
# that an earlier run of a script made at its end (the time is kept in DELETION_STAMP).
DELETION_STAMP="${DELETION_STAMP:-/var/tmp/mta-bench.deleted-at}"
DELETION_QUIET="${DELETION_QUIET:-65}"   # seconds from a bulk deletion to the first measured run

# mark_deletion: notes that many files were deleted just now (after a `sync`: the inode
# table blocks are clean, so ext4 skips the freed inodes for 60 s, not 360 s).
mark_deletion() { sync; date +%s >"$DELETION_STAMP"; }

# bulk_delete PATH...: deletes the paths (rm -rf) and marks the deletion.
bulk_delete() {
    local p paths=()
    for p in "$@"; do if [ -n "$p" ] && [ -e "$p" ]; then paths+=("$p"); fi; done
    [ "${#paths[@]}" -gt 0 ] || return 0
    rm -rf -- "${paths[@]}"
    mark_deletion
}

# wait_deletions_settled: sleeps until DELETION_QUIET seconds after the last bulk
# deletion (this run's or an earlier one's); prints the seconds slept.
wait_deletions_settled() {
    local at=0 left
    [ -f "$DELETION_STAMP" ] && at=$(cat "$DELETION_STAMP" 2>/dev/null || echo 0)
    left=$(( at + DELETION_QUIET - $(date +%s) ))
    if [ "$left" -gt 0 ] && [ "$left" -le "$DELETION_QUIET" ]; then
        log "waiting $left s: files were deleted at $(date -d "@$at" +%H:%M:%S), and ext4 (no journal) makes new files search past inodes freed in the last 60 s"
        sleep "$left"
        echo "$left"
    else
        echo 0
    fi
}

# move_aside DIR GRAVE: renames DIR (a directory of files to be deleted later) into the
# directory GRAVE (on the same file system: a rename, O(1), deletes nothing) and makes an
# empty DIR with the same owner and mode in its place. Nothing to do if DIR is missing or
# empty.
move_aside() {
    local dir=$1 grave=$2 dest
    [ -d "$dir" ] || return 0
    [ -n "$(find "$dir" -mindepth 1 -maxdepth 1 -print -quit)" ] || return 0
    mkdir -p "$grave"
    [ "$(stat -c %d "$grave")" = "$(stat -c %d "$dir")" ] || die "$grave and $dir are not on the same file system: moving would copy and delete"
    dest=$(mktemp -u "$grave/$(basename "$dir").XXXXXXXX")
    mv -T -- "$dir" "$dest"
    mkdir "$dir"
    chown --reference="$dest" "$dir"
    chmod --reference="$dest" "$dir"
}

# The main.cf lines of every benchmark instance: a dedicated instance (not the system
# one) on 127.0.0.1, no TLS, no DNS lookups of clients. The caller appends its own
# (mydestination, delivery or transports).
pf_main_cf() {
    cat <<MAINCF
# Generated by bench/servers/$(basename "$0"): a dedicated instance, not the system one.
compatibility_level = 3.6
meta_directory = /etc/postfix
queue_directory = $PF_QUEUE
data_directory = $PF_DATA
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = bench.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
default_process_limit = 200
smtpd_tls_security_level = none
smtp_tls_security_level = none
maillog_file = $PF_LOG
MAINCF
}

# master.cf: every service unchrooted (no copies of /etc files needed in the queue
# directory); one SMTP listener on 127.0.0.1:$PF_PORT and none on port 25.
pf_master_cf() {
    cat <<MASTERCF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
proxywrite unix - - n -     1 proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
local     unix  - n n -     - local
virtual   unix  - n n -     - virtual
lmtp      unix  - - n -     - lmtp
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
MASTERCF
}

# Starts the instance configured in $PF_CONF on an empty queue and an empty log.
pf_launch() {
    mkdir -p "$PF_QUEUE" "$PF_DATA"
    chown postfix "$PF_DATA"
    : >"$PF_LOG"
    postfix -c "$PF_CONF" set-permissions >/dev/null 2>&1 || true
    postfix -c "$PF_CONF" check
    # Leftovers of an earlier run that was stopped before its end (a deletion to wait for).
    local deleted
    deleted=$(postsuper -c "$PF_CONF" -d ALL 2>&1 || true)
    if [[ $deleted == *"Deleted: "[1-9]* ]]; then mark_deletion; fi
    postfix -c "$PF_CONF" start
}

# Messages still in Postfix's queue (incoming, active, deferred, hold, maildrop).
pf_queue_len() {
    { find "$PF_QUEUE/incoming" "$PF_QUEUE/active" "$PF_QUEUE/deferred" "$PF_QUEUE/hold" \
        "$PF_QUEUE/maildrop" -type f 2>/dev/null || true; } | wc -l
}

# dns_start: dnsmasq on 127.0.0.1:$DNS_PORT, authoritative for `test.` (so every other
# name there is NXDOMAIN with an SOA, which resolvers cache, as under a real zone), nothing
# else (no upstream, no /etc/hosts). Its records: SPF for the sender domain and the HELO
# name, DMARC (p=none: no rejections) and the DKIM key in DKIM_ZONE_LINE (the zone line
# of `mta dkim-keygen`). The caller sets WORK, DNS_PORT, DNS_TTL, DNS_LOG, SENDER_DOMAIN,
# HELO and DKIM_SELECTOR, and declares the PID array (PID[dns] is set here).
dns_start() {
    local parts
    # The key's TXT strings from `mta dkim-keygen`'s zone line, comma-separated for dnsmasq.
    parts=$(grep -o '"[^"]*"' <<<"$DKIM_ZONE_LINE" | tr -d '"' | paste -sd, -)
    [ -n "$parts" ] || die "no DKIM record in $WORK/dkim-keygen.out"
    # shellcheck disable=SC2054  # the commas belong to dnsmasq's option values
    local args=(-k --conf-file=/dev/null --pid-file= --user=root
        --port="$DNS_PORT" --listen-address=127.0.0.1 --bind-interfaces
        --no-resolv --no-hosts
        --auth-server=ns.test,127.0.0.1 --auth-zone=test --auth-ttl="$DNS_TTL"
        --auth-soa="1,hostmaster.test,1200,120,604800"
        --log-facility="$WORK/dnsmasq.log"
        "--txt-record=$SENDER_DOMAIN,v=spf1 ip4:127.0.0.1 -all"
        "--txt-record=$HELO,v=spf1 ip4:127.0.0.1 -all"
        "--txt-record=_dmarc.$SENDER_DOMAIN,v=DMARC1; p=none"
        "--txt-record=$DKIM_SELECTOR._domainkey.$SENDER_DOMAIN,$parts")
    [ "$DNS_LOG" = 1 ] && args+=(--log-queries)
    dnsmasq "${args[@]}" &
    PID[dns]=$!
    # Every record answers as published (dnspython comes with python3-dkim), from this
    # dnsmasq: when DNS_PORT is taken (another benchmark run, or one left over), dnsmasq
    # exits ("Address already in use") and the other server would answer with ITS key, so
    # mta would find dkim=fail (Signature verification failed) while dkimpy, given the
    # zone line, passes. Hence the exact DKIM record (this run's fresh key, string by
    # string) and a dnsmasq still running once it answered.
    local ok=0
    for _ in $(seq 50); do
        kill -0 "${PID[dns]}" 2>/dev/null || break
        if /usr/bin/python3 - "$DNS_PORT" "$SENDER_DOMAIN" "$HELO" "$DKIM_SELECTOR" "$parts" <<'PY' 2>/dev/null
import sys
import dns.message, dns.query, dns.rcode
port, domain, helo, selector, parts = sys.argv[1:]
def txt(name):
    q = dns.message.make_query(name, "TXT")
    r = dns.query.udp(q, "127.0.0.1", port=int(port), timeout=1)
    assert r.rcode() == dns.rcode.NOERROR, (name, dns.rcode.to_text(r.rcode()))
    return b"".join(s for rr in r.answer for item in rr for s in item.strings).decode()
assert txt(domain) == "v=spf1 ip4:127.0.0.1 -all"
assert txt(helo) == "v=spf1 ip4:127.0.0.1 -all"
assert txt("_dmarc." + domain) == "v=DMARC1; p=none"
q = dns.message.make_query(f"{selector}._domainkey.{domain}", "TXT")
r = dns.query.udp(q, "127.0.0.1", port=int(port), timeout=1)
assert [[s.decode() for s in item.strings] for rr in r.answer for item in rr] == [parts.split(",")]
PY
        then kill -0 "${PID[dns]}" 2>/dev/null && ok=1; break; fi
        sleep 0.1
    done
    [ "$ok" = 1 ] && return 0
    cat "$WORK/dnsmasq.log" >&2 2>/dev/null || true
    kill -0 "${PID[dns]}" 2>/dev/null || die "dnsmasq exited: is 127.0.0.1:$DNS_PORT taken (by another benchmark run)? Set DNS_PORT to a free port"
    die "dnsmasq on 127.0.0.1:$DNS_PORT does not serve the records (or another DNS server answers there)"
}

# mta_base_config DIR PORT: the start of an mta.toml for a receiving mta (a relay
# listener on PORT, queue and Maildir under DIR, $DOMAIN local with any user, $DNS_PORT
# as resolver); the caller appends its own sections.
mta_base_config() {
    cat <<EOF
# Generated by bench/servers/$(basename "$0")
hostname = "mta.bench.test"

[[listener]]
address = "127.0.0.1:$2"
mode = "relay"

[queue]
path = "$1/queue"

[local]
domains = ["$DOMAIN"]
maildir = "$1/maildir"
accept_any_user = true

[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]

EOF
}
