#!/usr/bin/env bash
# HAProxy, the load balancer the PROXY protocol tests put in front of a test server
# (smtp-server/tests/proxy.rs: `send-proxy` and `send-proxy-v2` in mode tcp). The tests
# start it in the foreground (-db) with their own configuration. Debian 12, as root;
# idempotent.
set -euo pipefail
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy
fi
# The package starts its own service where an init system runs; the tests need none.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet haproxy 2>/dev/null; then
    systemctl stop haproxy || true
fi
