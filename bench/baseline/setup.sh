#!/usr/bin/env bash
# Creates bench/.venv with the baseline's pinned packages. Idempotent: when the venv already
# holds exactly requirements.txt (its hash is stamped inside the venv) it returns at once.
#   bench/baseline/setup.sh           create or update the venv
#   bench/baseline/setup.sh --freeze  reinstall from requirements.in and rewrite requirements.txt
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(dirname "$here")/.venv"
req="$here/requirements.txt"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null; then
    echo "setup.sh: need CPython >= 3.9 (set PYTHON=...)" >&2
    exit 1
fi

if [[ "${1:-}" == "--freeze" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.in"
    {
        echo "# Pinned: the Python baseline's packages and all they pull in (CPython 3.11)."
        echo "# Top-level list: requirements.in. Regenerate: bench/baseline/setup.sh --freeze"
        "$venv/bin/pip" freeze
    } > "$req"
    sha256sum "$req" | cut -d' ' -f1 > "$venv/.requirements.sha256"
    echo "setup.sh: froze $(grep -vc '^#' "$req") packages into $req"
    exit 0
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$venv/.requirements.sha256" \
      && "$(cat "$venv/.requirements.sha256")" == "$want" ]]; then
    exit 0
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" -c 'import fastapi, uvicorn, aiokafka, aiochclient, aiohttp, orjson, uvloop, httptools'
echo "$want" > "$venv/.requirements.sha256"
echo "setup.sh: venv ready at $venv ($("$venv/bin/python" --version))"
