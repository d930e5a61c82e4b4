#!/usr/bin/env bash
# The smtp-server filter chain's cost per message, side by side in one run: no filter, one
# closure filter, a milter (OpenDKIM signing), rspamd (minimal configuration, then Debian's
# stock rules). The measuring is done by the bench
# `filter_chain` of ../crates (benches/filter_chain.rs: the servers, the client, the table);
# this script starts the daemons it talks to, runs it, stops them and prints the table.
#
#   client --SMTP--> smtp_server::Server (chain) --> sink (counts, drops)
#                                        |--milter--> opendkim -f   (unix socket)
#                                        '--HTTP----> rspamd -f     (127.0.0.1:port)
#
# The daemons run in the foreground on configurations of their own in a temp dir (as
# smtp-server/tests/milter.rs and tests/rspamd.rs start them): OpenDKIM with a generated
# RSA-2048 key for bench.test, signing mail from 127.0.0.1 (Mode sv); two rspamd, each in
# a process group of its own with one normal worker per core: (d) on a minimal
# configuration (the core only: no Lua rules), (e) on Debian's /etc/rspamd with our port
# and directories (no Redis, as on a fresh install). Both rspamd have DNS pointed at a
# closed port. A daemon that is not installed or does not start is left out: its chain is
# skipped with a message.
#
#   bash bench/servers/filters.sh                       # the defaults: about 3 minutes
#   COUNT=5000 ROUNDS=1 bash bench/servers/filters.sh   # a quick look
#
# Settings (environment), passed on to the bench:
#   COUNT           messages per run for (a) and (b)            default 20000
#   COUNT_MILTER    messages per run for (c)                    default 2000
#   COUNT_RSPAMD    messages per run for (d) and (e)            default 2000
#   SESSIONS        concurrent sessions, each value a run       default "1 10"
#   ROUNDS          interleaved rounds (medians are reported)   default 3
#   WARMUP          messages per chain and session count first  default 200
#   RSPAMD_WORKERS  rspamd normal workers                       default nproc
#   FILTER_BENCH    the bench binary (skips the cargo build)
# The table goes to stdout and to bench/servers/results/filters-<date>.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export COUNT="${COUNT:-20000}"
export COUNT_MILTER="${COUNT_MILTER:-2000}"
export COUNT_RSPAMD="${COUNT_RSPAMD:-2000}"
export SESSIONS="${SESSIONS:-1 10}"
export ROUNDS="${ROUNDS:-3}"
export WARMUP="${WARMUP:-200}"
RSPAMD_WORKERS="${RSPAMD_WORKERS:-$(nproc)}"
RESULTS_DIR="$HERE/results"
RESULT_MD="$RESULTS_DIR/filters-$(date +%Y%m%d-%H%M%S).md"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

WORK="$(mktemp -d /tmp/filter-bench.XXXXXX)"
OPENDKIM_PID=""
RSPAMD_PIDS=()

# stop PID [group]: SIGTERM to the process (to its process group with a second argument),
# up to 10 s for it to exit, then SIGKILL.
stop() {
    local pid=$1 group=${2:-} target=$1
    [ -n "$pid" ] || return 0
    [ -n "$group" ] && target="-$pid"
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "$target" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$OPENDKIM_PID"
    for pid in "${RSPAMD_PIDS[@]}"; do stop "$pid" group; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $2 seconds for the child $1 to make `test_cmd` (the rest) succeed; fails
# when the child exits first.
wait_for() {
    local pid=$1 seconds=$2
    shift 2
    for _ in $(seq $((seconds * 10))); do
        if "$@" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
unix_listens() { /usr/bin/python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$1"; }
tcp_listens() { (exec 3<>"/dev/tcp/127.0.0.1/$1"); }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- the bench binary
if [ -z "${FILTER_BENCH:-}" ]; then
    log "building the bench (cargo bench --bench filter_chain --no-run)"
    FILTER_BENCH=$(cd "$ROOT/bench/crates" &&
        cargo bench --bench filter_chain --no-run --message-format=json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "filter_chain" and m.get("executable"):
        print(m["executable"])')
fi
[ -x "${FILTER_BENCH:-}" ] || die "no bench binary (cd bench/crates && cargo bench --bench filter_chain --no-run)"

# ---------------------------------------------------------------- OpenDKIM
opendkim=$(command -v opendkim || true)
genkey=$(command -v opendkim-genkey || true)
if [ -z "$opendkim" ] || [ -z "$genkey" ]; then
    log "skipping OpenDKIM: not installed (apt-get install opendkim opendkim-tools)"
else
    "$genkey" -b 2048 -d bench.test -s sel -D "$WORK" || die "opendkim-genkey failed"
    cat >"$WORK/opendkim.conf" <<EOF
Syslog no
Mode sv
Domain bench.test
Selector sel
KeyFile $WORK/sel.private
Socket local:$WORK/opendkim.sock
PidFile $WORK/opendkim.pid
InternalHosts 127.0.0.1
RequireSafeKeys no
Canonicalization relaxed/simple
UMask 000
EOF
    "$opendkim" -f -x "$WORK/opendkim.conf" </dev/null >"$WORK/opendkim.log" 2>&1 &
    OPENDKIM_PID=$!
    if wait_for "$OPENDKIM_PID" 30 unix_listens "$WORK/opendkim.sock"; then
        export OPENDKIM="unix:$WORK/opendkim.sock" OPENDKIM_PID
        log "opendkim (pid $OPENDKIM_PID) on $OPENDKIM"
    else
        log "skipping OpenDKIM: it does not listen on $WORK/opendkim.sock:"
        cat "$WORK/opendkim.log" >&2
        stop "$OPENDKIM_PID"
        OPENDKIM_PID=""
    fi
fi

# ---------------------------------------------------------------- rspamd
# start_rspamd NAME VAR CONFIG [ARGS...]: rspamd -f on CONFIG with its own dirs under
# $WORK/NAME, in a process group of its own (setsid: its workers are stopped with it);
# exports VAR (its address) and VAR_PID when it listens on the port in $WORK/NAME/port.
start_rspamd() {
    local name=$1 var=$2 config=$3 dir="$WORK/$1" pid port
    shift 3
    port=$(cat "$dir/port")
    setsid "$rspamd" -f -c "$config" \
        "--var=DBDIR=$dir" "--var=RUNDIR=$dir" "--var=LOGDIR=$dir" "$@" \
        "--user=$(id -un)" "--group=$(id -gn)" --insecure \
        </dev/null >"$dir/rspamd.log" 2>&1 &
    pid=$!
    RSPAMD_PIDS+=("$pid")
    if wait_for "$pid" 60 tcp_listens "$port"; then
        export "$var=http://127.0.0.1:$port" "${var}_PID=$pid"
        log "rspamd $name (pid $pid, $RSPAMD_WORKERS workers) on http://127.0.0.1:$port"
    else
        log "skipping rspamd $name: it does not listen on 127.0.0.1:$port:"
        cat "$dir/rspamd.log" >&2
    fi
}

# The options both configurations share: files under DIR, a tiny public-suffix list
# (the real one takes long to compile at start), DNS to a closed port (no network: every
# lookup fails at once).
rspamd_options() {
    local dir=$1
    printf 'com\norg\nnet\ntest\n' >"$dir/tld.dat"
    cat <<EOF
pidfile = "$dir/rspamd.pid";
tempdir = "$dir";
hs_cache_dir = "$dir";
maps_cache_dir = "$dir";
url_tld = "$dir/tld.dat";
dns { nameserver = ["127.0.0.1:1"]; timeout = 1s; retransmits = 1; }
EOF
}

rspamd=$(command -v rspamd || true)
RSPAMD_PIDS=()
if [ -z "$rspamd" ]; then
    log "skipping rspamd: not installed (apt-get install rspamd)"
else
    # (d) minimal: the core only (no Lua rules, no modules), as smtp-server/tests/rspamd.rs.
    mkdir -p "$WORK/minimal"
    free_port >"$WORK/minimal/port"
    cat >"$WORK/minimal/rspamd.conf" <<EOF
options {
$(rspamd_options "$WORK/minimal")
filters = "";
}
logging { type = "console"; level = "warning"; }
worker "normal" { bind_socket = "127.0.0.1:$(cat "$WORK/minimal/port")"; count = $RSPAMD_WORKERS; }
actions { reject = 15; add_header = 6; greylist = 4; }
EOF
    start_rspamd minimal RSPAMD "$WORK/minimal/rspamd.conf"

    # (e) stock: Debian's /etc/rspamd/rspamd.conf with every rule and module it enables,
    # and overrides of our own (LOCAL_CONFDIR): our port and dirs, no controller or proxy
    # worker. No Redis is configured (Bayes, ratelimit, greylisting and the like are off,
    # as on a fresh install) and DNS fails at once (RBL, SURBL, SPF, DKIM and DMARC get
    # no answers: their CPU is saved, and their waiting).
    if [ -f /etc/rspamd/rspamd.conf ]; then
        local_dir="$WORK/stock/local"
        mkdir -p "$local_dir/local.d" "$local_dir/override.d"
        free_port >"$WORK/stock/port"
        rspamd_options "$WORK/stock" >"$local_dir/override.d/options.inc"
        echo 'type = "console"; level = "warning";' >"$local_dir/override.d/logging.inc"
        echo "bind_socket = \"127.0.0.1:$(cat "$WORK/stock/port")\"; count = $RSPAMD_WORKERS;" \
            >"$local_dir/override.d/worker-normal.inc"
        echo 'enabled = false;' >"$local_dir/override.d/worker-controller.inc"
        echo 'enabled = false;' >"$local_dir/override.d/worker-proxy.inc"
        start_rspamd stock RSPAMD_STOCK /etc/rspamd/rspamd.conf "--var=LOCAL_CONFDIR=$local_dir"
    else
        log "skipping rspamd stock: no /etc/rspamd/rspamd.conf"
    fi
fi

# ---------------------------------------------------------------- the run
mkdir -p "$RESULTS_DIR"
log "load before: $(uptime)"
command="COUNT=$COUNT COUNT_MILTER=$COUNT_MILTER COUNT_RSPAMD=$COUNT_RSPAMD SESSIONS=\"$SESSIONS\" ROUNDS=$ROUNDS bash bench/servers/filters.sh"
{
    echo "Command: \`$command\` (each rspamd: $RSPAMD_WORKERS normal workers)"
    "$FILTER_BENCH"
} | tee "$RESULT_MD"
log "load after: $(uptime)"
log "results in $RESULT_MD"
