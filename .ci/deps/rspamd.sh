#!/usr/bin/env bash
# Installs what smtp-server/tests/rspamd.rs needs on Debian 12 (run as root; idempotent):
# rspamd, started by the tests in the foreground on a configuration of their own.
set -euo pipefail
command -v rspamd >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rspamd
}
