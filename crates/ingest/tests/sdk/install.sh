#!/usr/bin/env bash
# Installs the real Segment SDKs the integration tests drive, from their registries, into a
# cache directory (default target/sdk): analytics-python and mmdb-writer (PyPI, in a venv),
# @segment/analytics-node, @segment/analytics-next and playwright-core (npm). Idempotent: a
# finished install is kept until this file changes. Chromium comes from Debian (.ci/run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${ESS_SDK_CACHE:-$here/../../../../target/sdk}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
stamp="$cache/.installed-$(sha256sum "$0" | cut -c1-16)"
[ -f "$stamp" ] && exit 0

python3 -m venv "$cache/venv"
"$cache/venv/bin/pip" install --quiet --disable-pip-version-check \
  segment-analytics-python==2.4.0 mmdb-writer==0.2.7 netaddr==1.3.0

mkdir -p "$cache/node"
cat > "$cache/node/package.json" <<'JSON'
{ "name": "ess-sdk-tests", "private": true }
JSON
(cd "$cache/node" && npm install --silent --no-audit --no-fund \
  @segment/analytics-node@3.1.0 @segment/analytics-next@1.84.3 playwright-core@1.65.1)

touch "$stamp"
echo "SDKs installed in $cache"
