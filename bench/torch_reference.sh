#!/usr/bin/env bash
# PyTorch (+ Opacus) reference of the fused recommender on CPU; see torch_reference.py.
#
#   bench/torch_reference.sh --data ../shared/data/ml-100k                 # train + recommend
#   bench/torch_reference.sh --data ../shared/data/ml-100k --dp --steps 10 # + DP-SGD step
#   bench/torch_reference.sh --data ../shared/data/ml-100k --check-learning
#
# Creates (once) a virtualenv at ${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fedfuse/torch-venv}
# with pinned torch, opacus and numpy from PyPI; re-running reuses it. torch comes from plain
# PyPI, whose Linux x86_64 wheel depends on the CUDA runtime packages (about 5.5 GB
# installed, unused here: everything runs on the CPU). The CPU-only wheel index is much
# smaller but was not reachable where this was written; set TORCH_INDEX_URL to use it (or
# a mirror) where it is. Arguments are passed through to torch_reference.py. Runs under
# `nice -n 10`.
set -euo pipefail

TORCH_VERSION=2.15.0
OPACUS_VERSION=1.6.0
NUMPY_VERSION=2.4.6
VENV="${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fedfuse/torch-venv}"
PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x "$VENV/bin/python" ]]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi

versions() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null || true
import importlib.metadata as m
print(" ".join(m.version(p).split("+")[0] for p in ("torch", "opacus", "numpy")))
EOF
}
if [[ "$(versions)" != "$TORCH_VERSION $OPACUS_VERSION $NUMPY_VERSION" ]]; then
  index=()
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    index=(--extra-index-url "$TORCH_INDEX_URL")
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${index[@]}" \
    "torch==$TORCH_VERSION" "opacus==$OPACUS_VERSION" "numpy==$NUMPY_VERSION" >&2
fi

# The timings are for a fixed thread count (--threads, default 2); keep BLAS pools to it too.
# Passive OpenMP waiting: with the default spin-waiting, a second thread on a core that other
# work also uses made every small op wait a scheduler slice (a training step measured ~9x
# slower on 2 threads than on 1 on a shared 2-core machine; passive: on par). Override with
# OMP_WAIT_POLICY=ACTIVE on an idle machine if that is faster there.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec nice -n 10 "$VENV/bin/python" "$HERE/torch_reference.py" "$@"
