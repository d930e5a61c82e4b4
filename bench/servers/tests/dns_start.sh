#!/bin/bash
# Regression test of common.sh `dns_start` (the benchmarks' dnsmasq): when DNS_PORT is
# already taken, by another benchmark run's dnsmasq with its own DKIM key, dns_start must
# fail, not go on with the other server answering. It used to go on: its own dnsmasq exits
# ("Address already in use"), the record check accepted any RSA key, and mta then found
# `dkim=fail (Signature verification failed)` (the other run's key) for a message that
# dkimpy, given this run's zone line, verifies: the intermittent DKIM failure of inbound.sh.
#
# Needs dnsmasq and dnspython (Debian dnsmasq-base or dnsmasq, python3-dkim); run as root
# like the benchmarks (dnsmasq --user=root). Usage: bench/servers/tests/dns_start.sh
# COMMON_SH=path runs it against another copy of common.sh (an older one fails the test).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/servers/common.sh
source "${COMMON_SH:-$HERE/../common.sh}"

command -v dnsmasq >/dev/null || die "dnsmasq is not installed (apt-get install dnsmasq-base)"
/usr/bin/python3 -c 'import dns.message, dns.query' || die "dnspython is missing (apt-get install python3-dkim)"

WORK=$(mktemp -d /tmp/dns_start_test.XXXXXX)
# A free port for UDP and TCP (the kernel's choice for UDP, checked free for TCP).
DNS_PORT=$(/usr/bin/python3 -c '
import socket
for _ in range(100):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port); break')
DNS_TTL=300 DNS_LOG=0 SENDER_DOMAIN=bench.test HELO=client.bench.test DKIM_SELECTOR=s1
declare -A PID=()
OTHER_PID=""
# shellcheck disable=SC2317  # called by the trap
finish() { stop_pid "${PID[dns]:-}"; stop_pid "$OTHER_PID"; rm -rf "$WORK"; }
trap finish EXIT

# Two zone lines of `mta dkim-keygen --algorithm rsa` (two keys, as two runs make them).
KEY_A='s1._domainkey.bench.test. IN TXT "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEArbIm0VNVyuNFnR2cZ32JRqjeL234a+BAU+d7IQR+QfHTWdF+40a1fJBT2z7KcgofW224nF5zLIlpAdHt+06ODMCleICqDN9NvaVYbT9ZmrHuwYCIvHQOzihJtv6L9KQf2130ICSOsr2N4hwKorvXHvEAHThrABJ2eg5r9FY38N84QVTsY6UzA3R9Nt+l" "pAcLt0I/OsX/iHgQjYnLM6xKrRKzsPqp4CLN7bmhf1AuKOrQGo/Yc5uTAtSNW4m9IC1Xi0pLolgMnmHvUXfsFN/GuoO+BznrjUQm+Drl/W/ZspG6RKliQqxKptdUeSAvBWmasAbzssdgC9kCVEXIUqmXVwIDAQAB"'
KEY_B='s1._domainkey.bench.test. IN TXT "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqZPJy9NHjXC1/b3uSEpfcQn4iauxh7cHMSwKUAI07+ibYyw/4g7gSTHlYg1SCrOn4lEd22uLe03LjT9KpUCBXIhnhNdUeYzpY5ZX4g4rcHG7lxzT6vhWKUCh/+mCcTqEaNprPkFbXPbJC9x/Yav81PV9E2V3aQT2xf2y0ZimvGrii/47OGrDGGZVKGKg" "FiWNjaH5klI8ZCn/5wdqx13h2BNUTgAJzlju5YsIHvvtywIQs2+9dRclEbCkVId3moNkPV1qbohVAOO7PwEFctOwmT9asF454vfZwAnIyQzNMadZMknPqKcNQ9UOmJNwoujGOyEpidL/zK0QjiUJRMxzeQIDAQAB"'

# The DKIM record (its strings joined) that 127.0.0.1:$DNS_PORT serves.
served_key() {
    /usr/bin/python3 - "$DNS_PORT" <<'PY'
import sys
import dns.message, dns.query
q = dns.message.make_query("s1._domainkey.bench.test", "TXT")
r = dns.query.udp(q, "127.0.0.1", port=int(sys.argv[1]), timeout=2)
print(b"".join(s for rr in r.answer for item in rr for s in item.strings).decode())
PY
}
record_of() { grep -o '"[^"]*"' <<<"$1" | tr -d '"\n'; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. The port is free: dns_start serves this run's key. This dnsmasq stays, as the other run's.
mkdir -p "$WORK/a"
WORK=$WORK/a DKIM_ZONE_LINE=$KEY_A dns_start
OTHER_PID=${PID[dns]}
[ "$(served_key)" = "$(record_of "$KEY_A")" ] || fail "dns_start on a free port does not serve its key"
echo "ok: dns_start on free port $DNS_PORT serves its key"

# 2. A second run on the same port, with another key: dns_start must fail (in a subshell,
# as `die` exits), and say why.
mkdir -p "$WORK/b"
status=0
( WORK=$WORK/b DKIM_ZONE_LINE=$KEY_B dns_start ) 2>"$WORK/b.stderr" || status=$?
[ "$(served_key)" = "$(record_of "$KEY_A")" ] || fail "the first dnsmasq no longer answers"
[ "$status" != 0 ] || fail "dns_start succeeded on a port another dnsmasq holds, which serves the other key: mta would check this run's signatures against it (dkim=fail)"
grep -q "dnsmasq exited: is 127.0.0.1:$DNS_PORT taken" "$WORK/b.stderr" \
    || fail "dns_start failed without saying the port is taken: $(cat "$WORK/b.stderr")"
echo "ok: dns_start on a taken port fails: $(grep 'error:' "$WORK/b.stderr")"
echo "PASS"
