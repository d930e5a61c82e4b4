#!/usr/bin/env bash
# Milters the smtp-server milter tests start (smtp-server/tests/milter.rs): OpenDKIM
# (signing, checked with python3-dkim) and clamav-milter with clamd (a content milter
# fed a one-line signature database of the test's own; no freshclam download).
# Debian 12, as root; idempotent.
set -euo pipefail
if ! command -v opendkim >/dev/null 2>&1 || ! command -v opendkim-genkey >/dev/null 2>&1 \
    || ! command -v clamav-milter >/dev/null 2>&1 || ! command -v clamd >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        opendkim opendkim-tools clamav-milter clamav-daemon
fi
# The packages start their services where an init system runs; the tests start their
# own daemons in the foreground with their own configuration, so stop those (quietly).
for service in opendkim clamav-milter clamav-daemon clamav-freshclam; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    fi
done
