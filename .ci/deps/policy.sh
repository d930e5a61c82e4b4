#!/usr/bin/env bash
# Installs what smtp-server/tests/policy.rs needs on Debian 12 (run as root; idempotent):
# postgrey, a Postfix policy server that greylists.
set -euo pipefail
command -v postgrey >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgrey
}
