#!/usr/bin/python3
"""Makes the fixtures of tests/dkim_bench_keys.rs, as bench/servers/inbound.sh's
make_messages makes its messages: for each of a and b, a fresh key from
`mta dkim-keygen --algorithm rsa` (its zone line in X.zone; the private key is not kept)
and the 1024-byte benchmark message signed by dkimpy (c=relaxed/simple) in X.eml (CRLF).

Usage (in this folder, with Debian's python3-dkim): ./make.py PATH/TO/mta
"""
import os, re, subprocess, sys, tempfile

import dkim

mta = sys.argv[1]
sender, rcpt, selector, domain, size = "sender@bench.test", "benchuser@maildir.test", "s1", "bench.test", 1024
for name in ("a", "b"):
    with tempfile.TemporaryDirectory() as tmp:
        key = os.path.join(tmp, "dkim.key")
        out = subprocess.run([mta, "dkim-keygen", "--domain", domain, "--selector", selector,
                              "--algorithm", "rsa", "--output", key],
                             check=True, capture_output=True, text=True).stdout
        with open(key, "rb") as f:
            private = f.read()
    zone_line = next(l for l in out.splitlines() if "_domainkey" in l)
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
    signed = dkim.sign(message, selector.encode(), domain.encode(), private,
                       canonicalize=(b"relaxed", b"simple"),
                       include_headers=[b"from", b"to", b"date", b"message-id"]) + message
    record = b"".join(re.findall(rb'"([^"]*)"', zone_line.encode()))
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record), "does not verify"
    with open(f"{name}.zone", "w") as f:
        f.write(zone_line + "\n")
    with open(f"{name}.eml", "wb") as f:
        f.write(signed)
