"""numpy FedAvg reference for `cargo bench -p fedfuse-server --bench aggregate`.

Two ways people average updates in numpy: streaming into a float64 accumulator, and the
common one-liner over a stacked array (np.average). Each runs in its own process so its peak
RSS is its own. Prints one JSON line.
"""
import json
import resource
import sys
import time

import numpy as np

mode, n, params = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
base = rng.standard_normal(params, dtype=np.float32)
weights = np.arange(1, n + 1, dtype=np.float64)

if mode == "streaming":
    acc = np.zeros(params, dtype=np.float64)
    upd = np.empty(params, dtype=np.float32)
    elapsed = 0.0
    for u in range(n):
        np.multiply(base, np.float32(1 + u * 1e-3), out=upd)  # a fresh update, untimed
        t = time.perf_counter()
        acc += weights[u] * upd
        elapsed += time.perf_counter() - t
    t = time.perf_counter()
    out = (acc / weights.sum()).astype(np.float32)
    elapsed += time.perf_counter() - t
elif mode == "stacked":
    stack = np.empty((n, params), dtype=np.float32)
    for u in range(n):
        np.multiply(base, np.float32(1 + u * 1e-3), out=stack[u])
    t = time.perf_counter()
    out = np.average(stack, axis=0, weights=weights).astype(np.float32)
    elapsed = time.perf_counter() - t
else:
    raise SystemExit(f"unknown mode {mode}")

print(json.dumps({"mode": mode, "seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "numpy": np.__version__, "check": float(out[:1000].sum())}))
