#!/usr/bin/env bash
# Runs bench/aggregate_numpy.py in a venv it makes once (${VENV:-$HOME/.cache/fedfuse/numpy-venv}).
set -euo pipefail
NUMPY_VERSION=2.2.6
VENV="${VENV:-$HOME/.cache/fedfuse/numpy-venv}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import numpy, sys; sys.exit(numpy.__version__ != '$NUMPY_VERSION')" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "numpy==$NUMPY_VERSION"
fi
# Elementwise work only; OpenBLAS settings do not apply, and nothing here is tuned.
exec "$VENV/bin/python" "$HERE/aggregate_numpy.py" "$@"
