#!/usr/bin/env bash
# Installs what auth-checks/tests/dnsbl.rs needs on Debian 12 (run as root; idempotent):
# dnsmasq, started by the tests in the foreground on a loopback port with the DNSBL,
# PTR and address records of each test (no upstream, no /etc/hosts).
set -euo pipefail
command -v dnsmasq >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsmasq-base
}
