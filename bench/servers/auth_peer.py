#!/usr/bin/python3
"""The peer of benches/benches/auth_checks.rs: the same per-message sender-authentication
work done by the Python libraries most often used for it, on the same message and the
same DNS records.

- SPF: pyspf (`spf.check2`), for the HELO identity and then the MAIL FROM identity, as
  auth_checks' `Verifier::spf` does;
- DKIM, ARC and DMARC: authheaders (`authenticate_message`, which runs dkimpy's DKIM
  and ARC verification and its own DMARC), given that SPF result, as `check_message`;
- whole: the HELO SPF check, then `authenticate_message` with SPF (MAIL FROM), DKIM, ARC
  and DMARC.

The message is the one the Rust bench builds (2048 bytes before signing, From
alice@example.org), signed by dkimpy with c=relaxed/simple over the header fields our
DkimSigner signs, once with an RSA-2048 key and once with an Ed25519 key, both made by
`mta dkim-keygen` (auth_checks::generate_key). The records (SPF
`v=spf1 ip4:192.0.2.0/24 -all` for example.org and mail.example.org, `_dmarc.example.org`
`v=DMARC1; p=reject`, the two keys) are served by dnsmasq on 127.0.0.1 (authoritative for
`org.`, TTL 3600 s). Client 192.0.2.1, HELO mail.example.org, MAIL FROM alice@example.org.

DNS goes through dnspython's default resolver, which all three libraries use, pointed at
that dnsmasq: with a cache (`warm/*`: after the first message every answer comes from it,
like the hickory cache in the Rust bench) or with that cache flushed before every message
(`cold/*`, the flush not timed).

Each case runs for --warm-up seconds, then for --seconds; it reports the median time per
message (and the mean) and messages per second (1 / median) on one core (Python: one
thread). Every verdict is checked once first (spf=pass, dkim=pass, dmarc=pass).
authheaders 0.15 reads and parses the public suffix list file on every organizational-
domain lookup (four per message, ~0.1 s each): the script parses it once instead, unless
--psl-per-call.

    /usr/bin/python3 bench/servers/auth_peer.py                    # MTA_BIN or target/release/mta
    /usr/bin/python3 bench/servers/auth_peer.py --seconds 10 --json results/auth-peer.json

Needs Debian's python3-dkim, python3-spf, python3-authheaders (with dnspython, PyNaCl) and
dnsmasq (dnsmasq-base).
"""

import argparse
import base64
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import authheaders
import authheaders.dmarc_lookup
import authres
import dkim
import dns.message
import dns.query
import dns.resolver
import spf

DOMAIN = "example.org"
HELO = "mail.example.org"
MAIL_FROM = "alice@example.org"
CLIENT = "192.0.2.1"
HOSTNAME = "mx.example.net"
MESSAGE_SIZE = 2048
# auth_checks::DEFAULT_SIGNED_HEADERS that the message has, then From once more.
SIGNED = [b"from", b"subject", b"date", b"to", b"message-id", b"mime-version",
          b"content-type", b"content-transfer-encoding", b"from"]


def message():
    """The same bytes as `message()` in benches/benches/auth_checks.rs."""
    m = bytearray(
        b"From: Alice Example <alice@example.org>\r\n"
        b"To: Bob <bob@example.net>\r\n"
        b"Subject: Quarterly report and the schedule for next week\r\n"
        b"Date: Tue, 24 Nov 2026 20:00:00 +0000\r\n"
        b"Message-ID: <20261124200000.4f2a9c@mail.example.org>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n")
    line = b"Hello Bob, the quarterly report is attached; see you at the meeting.\r\n"
    while len(m) + len(line) <= MESSAGE_SIZE - 7:
        m += line
    while len(m) < MESSAGE_SIZE - 2:
        m += b"-"
    m += b"\r\n"
    return bytes(m)


def keygen(mta, workdir, algorithm, selector):
    """(private PEM, the TXT strings to publish) from `mta dkim-keygen`."""
    path = os.path.join(workdir, f"{selector}.key")
    out = subprocess.run(
        [mta, "dkim-keygen", "--domain", DOMAIN, "--selector", selector,
         "--algorithm", algorithm, "--output", path],
        check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if "_domainkey" in x)
    with open(path, "rb") as f:
        return f.read(), re.findall(r'"([^"]*)"', line)


def ed25519_seed(pem):
    """dkimpy wants the raw 32-byte seed, base64; the PEM is PKCS#8."""
    der = base64.b64decode(b"".join(x for x in pem.splitlines() if not x.startswith(b"-----")))
    at = der.index(b"\x04\x22\x04\x20") + 4
    return base64.b64encode(der[at:at + 32])


def start_dns(port, workdir, keys):
    args = ["dnsmasq", "-k", "--conf-file=/dev/null", "--pid-file=", "--user=root",
            f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts",
            "--auth-server=ns.org,127.0.0.1", "--auth-zone=org", "--auth-ttl=3600",
            "--auth-soa=1,hostmaster.org,1200,120,604800",
            f"--log-facility={os.path.join(workdir, 'dnsmasq.log')}",
            f"--txt-record={DOMAIN},v=spf1 ip4:192.0.2.0/24 -all",
            f"--txt-record={HELO},v=spf1 ip4:192.0.2.0/24 -all",
            f"--txt-record=_dmarc.{DOMAIN},v=DMARC1; p=reject"]
    for selector, parts in keys.items():
        args.append(f"--txt-record={selector}._domainkey.{DOMAIN}," + ",".join(parts))
    proc = subprocess.Popen(args)
    for _ in range(100):
        try:
            q = dns.message.make_query(f"_dmarc.{DOMAIN}", "TXT")
            if dns.query.udp(q, "127.0.0.1", port=port, timeout=0.2).answer:
                return proc
        except Exception:  # noqa: BLE001  not up yet
            pass
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"dnsmasq did not answer on 127.0.0.1:{port}")


def load_psl_once():
    """authheaders 0.15 parses the whole public suffix list file on every
    `get_org_domain` call (four per message here, ~0.1 s each): parse it once, as a
    long-running server would."""
    with open(authheaders.dmarc_lookup.get_suffix_list_file_name()) as f:
        psl = authheaders.dmarc_lookup.PublicSuffixList(f)

    def get_org_domain(domain):
        return psl.get_public_suffix(domain)

    authheaders.get_org_domain = get_org_domain
    authheaders.dmarc_lookup.get_org_domain = get_org_domain


def spf_both():
    """HELO identity, then MAIL FROM identity (as Verifier::spf)."""
    helo = spf.check2(i=CLIENT, s=f"postmaster@{HELO}", h=HELO)
    mail_from = spf.check2(i=CLIENT, s=MAIL_FROM, h=HELO)
    return helo, mail_from


def check_message(msg, spf_verdict):
    """`authenticate_message` without its SPF step, given that verdict (result, reason)."""
    # A new object each time: check_dmarc rewrites its smtp_mailfrom.
    spf_result = authres.SPFAuthenticationResult(
        result=spf_verdict[0], reason=spf_verdict[1], smtp_mailfrom=MAIL_FROM, smtp_helo=HELO)
    dkim_result = authheaders.check_dkim(msg)
    arc_result = authheaders.check_arc(msg, None)
    dmarc_result = authheaders.check_dmarc(msg, spf_result, dkim_result)
    return str(authheaders.AuthenticationResultsHeader(
        authserv_id=HOSTNAME, results=[spf_result, dkim_result, arc_result, dmarc_result]))


def whole(msg):
    spf.check2(i=CLIENT, s=f"postmaster@{HELO}", h=HELO)
    return authheaders.authenticate_message(
        msg, HOSTNAME, spf=True, dkim=True, arc=True, dmarc=True, ip=CLIENT,
        mail_from=MAIL_FROM, helo=HELO)


def measure(fn, warm_up, seconds, before=None):
    """Per-call times in ns: calls for `warm_up` s (not kept), then for `seconds` s."""
    times = []
    for budget, keep in ((warm_up, False), (seconds, True)):
        end = time.perf_counter() + budget
        while time.perf_counter() < end:
            if before:
                before()
            t0 = time.perf_counter_ns()
            fn()
            t1 = time.perf_counter_ns()
            if keep:
                times.append(t1 - t0)
    return times


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mta", default=os.environ.get("MTA_BIN") or
                        os.path.join(here, "..", "..", "target", "release", "mta"))
    parser.add_argument("--dns-port", type=int, default=5355)
    parser.add_argument("--warm-up", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--psl-per-call", action="store_true",
                        help="keep authheaders' parsing of the public suffix list per call")
    args = parser.parse_args()
    if not args.psl_per_call:
        load_psl_once()
    if not shutil.which("dnsmasq"):
        sys.exit("dnsmasq not found (apt-get install dnsmasq-base)")

    workdir = tempfile.mkdtemp(prefix="auth-peer.")
    rsa_pem, rsa_txt = keygen(args.mta, workdir, "rsa", "rsa")
    ed_pem, ed_txt = keygen(args.mta, workdir, "ed25519", "ed")
    dnsmasq = start_dns(args.dns_port, workdir, {"rsa": rsa_txt, "ed": ed_txt})
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = args.dns_port
        resolver.cache = dns.resolver.Cache()
        dns.resolver.default_resolver = resolver

        unsigned = message()
        messages = {
            "rsa2048": dkim.sign(unsigned, b"rsa", DOMAIN.encode(), rsa_pem,
                                 canonicalize=(b"relaxed", b"simple"),
                                 include_headers=SIGNED) + unsigned,
            "ed25519": dkim.sign(unsigned, b"ed", DOMAIN.encode(), ed25519_seed(ed_pem),
                                 canonicalize=(b"relaxed", b"simple"),
                                 signature_algorithm=b"ed25519-sha256",
                                 include_headers=SIGNED) + unsigned,
        }
        helo_result, mail_from_result = spf_both()
        assert helo_result[0] == "pass" and mail_from_result[0] == "pass", \
            (helo_result, mail_from_result)
        spf_result = mail_from_result
        for name, msg in messages.items():
            for header in (whole(msg), check_message(msg, spf_result)):
                for needed in ("spf=pass", "dkim=pass", "dmarc=pass"):
                    assert needed in header, f"{name}: no {needed} in {header}"

        cases = [("warm/spf", spf_both, None)]
        for name, msg in messages.items():
            cases.append((f"warm/message_{name}",
                          lambda msg=msg: check_message(msg, spf_result), None))
        for name, msg in messages.items():
            cases.append((f"warm/whole_{name}", lambda msg=msg: whole(msg), None))
        for name, msg in messages.items():
            cases.append((f"cold/whole_{name}", lambda msg=msg: whole(msg),
                          resolver.cache.flush))

        results = {}
        print(f"{'case':24} {'median µs':>10} {'mean µs':>10} {'msgs/s':>8} {'calls':>7}")
        for name, fn, before in cases:
            times = measure(fn, args.warm_up, args.seconds, before)
            median = statistics.median(times) / 1000
            mean = statistics.fmean(times) / 1000
            results[name] = {"median_us": median, "mean_us": mean, "calls": len(times)}
            print(f"{name:24} {median:10.1f} {mean:10.1f} {1e6 / median:8.0f} {len(times):7}",
                  flush=True)
        versions = {"python": sys.version.split()[0], "pyspf": spf.__version__}
        for dist in ("dkimpy", "authheaders", "authres", "dnspython", "PyNaCl"):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = "?"
        print("versions:", ", ".join(f"{k} {v}" for k, v in versions.items()))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": results, "versions": versions}, f, indent=1)
    finally:
        dnsmasq.terminate()
        dnsmasq.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
