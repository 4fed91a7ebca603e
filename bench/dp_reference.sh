#!/usr/bin/env bash
# Generate reference epsilons with Google's dp-accounting (see dp_reference.py).
#
#   bench/dp_reference.sh --subset                          # -> privacy/tests/data/dp_accounting_reference.csv
#   bench/dp_reference.sh --out bench/dp_reference_full.csv # full 80-row grid
#
# Creates (once) a virtualenv at ${VENV:-$HOME/.cache/fedfuse/dp-venv} with a
# pinned dp-accounting from PyPI; re-running reuses it.  Arguments are passed
# through to dp_reference.py.  Runs under `nice -n 10`.
set -euo pipefail

DP_ACCOUNTING_VERSION=0.6.0
VENV="${VENV:-$HOME/.cache/fedfuse/dp-venv}"
PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x "$VENV/bin/python" ]]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi

installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("dp-accounting"))' 2>/dev/null || true)"
if [[ "$installed" != "$DP_ACCOUNTING_VERSION" ]]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "dp-accounting==$DP_ACCOUNTING_VERSION"
fi

exec nice -n 10 "$VENV/bin/python" "$HERE/dp_reference.py" "$@"
