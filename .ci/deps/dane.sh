#!/usr/bin/env bash
# Installs what smtp-client/tests/dane.rs needs on Debian 12 (run as root; idempotent):
# Knot DNS (knotd and keymgr: the authoritative server the tests start on a loopback
# port, signing the test zones as it loads them) and Unbound (the validating resolver
# the tests start on another loopback port, with a stub zone to knotd and the test
# zones' trust anchors). The packages' own services are not used (and, without
# systemd, not started).
set -euo pipefail
if ! command -v knotd >/dev/null 2>&1 || ! command -v keymgr >/dev/null 2>&1 \
    || ! command -v unbound >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        knot knot-dnsutils unbound
fi
