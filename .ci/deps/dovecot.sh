#!/usr/bin/env bash
# Installs what mta-bin/tests/dovecot.rs needs on Debian 12 (run as root; idempotent):
# Dovecot 2.3 with its LMTP server, started by the tests in the foreground on a
# configuration of their own (LMTP only, a loopback port, a temporary directory). The
# package's own service is not used (and, without systemd, not started).
set -euo pipefail
if ! command -v dovecot >/dev/null 2>&1 || [ ! -x /usr/lib/dovecot/lmtp ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        dovecot-core dovecot-lmtpd
fi
