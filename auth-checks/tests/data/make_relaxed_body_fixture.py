#!/usr/bin/python3
"""Makes the relaxed-body regression fixture of auth-checks/tests/dkim_interop.rs.

Run ONCE (it makes new keys each time), from this folder, with dkimpy (Debian
`python3-dkim`, or `pip install dkimpy pynacl`) and openssl:

    /usr/bin/python3 make_relaxed_body_fixture.py

It writes `relaxed-body.eml`, a message whose body is exactly "Hello!\\r\\n  \\r\\n\\r\\n"
signed by dkimpy with c=relaxed/relaxed twice (rsa-sha256, RSA-2048, selector
`dkimpy-rsa`; ed25519-sha256, selector `dkimpy-ed`; d=example.org), and
`relaxed-body.zone`, the key records as zone-file lines. The private keys are thrown
away. RFC 6376 section 3.4.4 canonicalizes that body to "Hello!\\r\\n"; mail-auth
0.13.3 keeps the whitespace-only line and so fails the body hash without the
workaround in auth-checks/src/verify.rs.
"""

import base64
import subprocess
import tempfile

import dkim
import nacl.signing

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: relaxed body regression\r\n"
    b"Date: Tue, 24 Nov 2026 20:00:00 +0000\r\n"
    b"Message-ID: <relaxed-body-1@example.org>\r\n"
    b"\r\n"
    b"Hello!\r\n  \r\n\r\n"
)
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


def zone_line(selector, value):
    parts = [value[i : i + 250] for i in range(0, len(value), 250)]
    quoted = " ".join('"%s"' % p for p in parts)
    return "%s._domainkey.example.org. IN TXT %s\n" % (selector, quoted)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["openssl", "genrsa", "-traditional", "-out", tmp + "/rsa.pem", "2048"],
            check=True,
            capture_output=True,
        )
        rsa_private = open(tmp + "/rsa.pem", "rb").read()
        spki = subprocess.run(
            ["openssl", "rsa", "-in", tmp + "/rsa.pem", "-pubout", "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
    rsa_record = "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()

    ed_key = nacl.signing.SigningKey.generate()
    ed_private = base64.b64encode(bytes(ed_key))
    ed_record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(ed_key.verify_key)).decode()

    canon = (b"relaxed", b"relaxed")
    sig_rsa = dkim.sign(
        MESSAGE, b"dkimpy-rsa", b"example.org", rsa_private,
        canonicalize=canon, include_headers=HEADERS,
    )
    sig_ed = dkim.sign(
        MESSAGE, b"dkimpy-ed", b"example.org", ed_private,
        canonicalize=canon, include_headers=HEADERS,
        signature_algorithm=b"ed25519-sha256",
    )
    signed = sig_ed + sig_rsa + MESSAGE

    # dkimpy itself must accept what it made.
    records = {
        b"dkimpy-rsa._domainkey.example.org.": rsa_record.encode(),
        b"dkimpy-ed._domainkey.example.org.": ed_record.encode(),
    }
    dnsfunc = lambda name, timeout=5: records.get(name)
    for idx in (0, 1):
        assert dkim.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc), idx

    with open("relaxed-body.eml", "wb") as f:
        f.write(signed)
    with open("relaxed-body.zone", "w") as f:
        f.write("; key records for relaxed-body.eml (made by make_relaxed_body_fixture.py)\n")
        f.write(zone_line("dkimpy-rsa", rsa_record))
        f.write(zone_line("dkimpy-ed", ed_record))


if __name__ == "__main__":
    main()
