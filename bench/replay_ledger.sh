#!/usr/bin/env bash
# Replay a fedfuse privacy ledger with Google's dp_accounting, outside fedfuse:
#
#   bench/replay_ledger.sh store.ledger.jsonl [--json]
#
# Uses the same venv as dp_reference.sh (${VENV:-$HOME/.cache/fedfuse/dp-venv}) and adds the
# blake3 package to it once.
set -euo pipefail

DP_ACCOUNTING_VERSION=0.6.0
BLAKE3_VERSION=1.0.11
VENV="${VENV:-$HOME/.cache/fedfuse/dp-venv}"
PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x "$VENV/bin/python" ]]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" - 2>/dev/null <<PY || "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "dp-accounting==$DP_ACCOUNTING_VERSION" "blake3==$BLAKE3_VERSION"
import importlib.metadata as m, sys
ok = m.version("dp-accounting") == "$DP_ACCOUNTING_VERSION" and m.version("blake3") == "$BLAKE3_VERSION"
sys.exit(0 if ok else 1)
PY
exec "$VENV/bin/python" "$HERE/replay_ledger.py" "$@"
