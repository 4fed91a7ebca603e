#!/usr/bin/env python3
"""Reference epsilons for the Poisson-subsampled Gaussian mechanism.

Uses Google's `dp-accounting` package (PyPI) to compute, for the mechanism
PoissonSampled(q, Gaussian(sigma)) self-composed `steps` times, the epsilon at
delta = 1e-5 with both

  * `dp_accounting.rdp.RdpAccountant` (default RDP orders), and
  * `dp_accounting.pld.PLDAccountant` (default value_discretization_interval
    1e-4, pessimistic estimate, ADD_OR_REMOVE_ONE neighbouring relation).

The output is used to check fedfuse's Rust RDP and PLD accountants.  Run it
through `bench/dp_reference.sh`, which sets up a pinned virtualenv.

Grid (80 rows):
  sigma in {0.5, 0.8, 1, 1.5, 3}
  q     in {0.001, 0.01, 0.1, 1}
  steps in {1, 100, 1000, 10000}
  delta =  1e-5

For q == 1 the main columns use the plain event
SelfComposedDpEvent(GaussianDpEvent(sigma), steps).  The Poisson-wrapped
event with q == 1 is also evaluated and written to `eps_rdp_poisson_q1` /
`eps_pld_poisson_q1` (empty for q < 1): the RDP values are identical
(dp-accounting special-cases q == 1 to alpha / (2 sigma^2)); the PLD values
differ in the ~1e-9 relative range because the plain Gaussian is composed
analytically (sigma / sqrt(steps)) while the Poisson-wrapped one is composed
numerically (FFT self-composition of the discretised PLD).

`--subset` writes only a fixed subset (21 rows) that is cheap to compute and
spans the grid; it goes to privacy/tests/data/dp_accounting_reference.csv and
is asserted by Rust tests:
  sigma in {0.5, 1, 3} x q in {0.01, 0.1, 1} x steps in {1, 100}   (18 rows)
  sigma in {0.8, 1, 1.5} x q = 0.01 x steps = 1000                 (3 rows,
                                                  the typical DP-SGD regime)

Columns (the first eight are the stable interface; extras follow):
  sigma,q,steps,delta,eps_rdp,eps_pld,seconds_rdp,seconds_pld,
  rdp_order          RDP order achieving the optimum (from
                     get_epsilon_and_optimal_order)
  pld_interval       value_discretization_interval used for the PLD (1e-4
                     except coarser for large q == 1 cells, see
                     pld_interval_for)
  rdp_dropped_orders number of RDP orders dp-accounting excluded because
                     `_compute_log_a_frac` failed to converge (eps_rdp is then
                     the optimum over the remaining orders only)
  eps_rdp_poisson_q1,eps_pld_poisson_q1   see above (q == 1 rows only)

Lines starting with '#' are comments (version header).
"""

import argparse
import csv
import importlib.metadata
import logging
import math
import os
import platform
import sys
import time

import dp_accounting
from dp_accounting import pld, rdp

SIGMAS = [0.5, 0.8, 1.0, 1.5, 3.0]
QS = [0.001, 0.01, 0.1, 1.0]
STEPS = [1, 100, 1000, 10000]
DELTA = 1e-5
DEFAULT_PLD_INTERVAL = 1e-4

# Coarser PLD discretisation for the q == 1 cells only.
#
# For q == 1 the composed mechanism is a single Gaussian with
# mu = sqrt(steps) / sigma, which dp-accounting discretises densely; the cost
# (time and memory) grows ~ mu^2 / interval.  At the default 1e-4,
# sigma=0.5/steps=1000 (mu^2=4000) took 60 s and sigma=0.5/steps=10000
# (mu^2=40000) was OOM-killed on a 24 GiB machine.  Such cells have eps in the
# hundreds to tens of thousands, and the discretisation error of a single
# (analytically composed) Gaussian PLD is O(interval), so we scale the interval
# by the smallest power of ten >= mu^2 / 400 (mu=20, sigma=0.5/steps=100, is
# the largest cell kept at 1e-4, ~8 s).  q < 1 cells always use the default
# interval (all well under 2 minutes).  The interval used is in `pld_interval`.
Q1_MU2_AT_DEFAULT = 400.0


def pld_interval_for(sigma, q, steps, base):
  if q != 1.0:
    return base
  ratio = (steps / sigma**2) / Q1_MU2_AT_DEFAULT
  if ratio <= 1.0:
    return base
  return base * 10.0**math.ceil(math.log10(ratio) - 1e-12)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FULL_OUT = os.path.join(REPO_ROOT, "bench", "dp_reference_full.csv")
DEFAULT_SUBSET_OUT = os.path.join(
    REPO_ROOT, "privacy", "tests", "data", "dp_accounting_reference.csv")

COLUMNS = [
    "sigma", "q", "steps", "delta", "eps_rdp", "eps_pld", "seconds_rdp",
    "seconds_pld", "rdp_order", "pld_interval", "rdp_dropped_orders",
    "eps_rdp_poisson_q1", "eps_pld_poisson_q1",
]


def full_grid():
  return [(s, q, n) for s in SIGMAS for q in QS for n in STEPS]


def subset_grid():
  rows = [(s, q, n) for s in (0.5, 1.0, 3.0) for q in (0.01, 0.1, 1.0)
          for n in (1, 100)]
  rows += [(s, 0.01, 1000) for s in (0.8, 1.0, 1.5)]
  return sorted(rows)


class _ConvergenceCounter(logging.Handler):
  """Counts absl's 'failed to converge' warnings from the RDP accountant."""

  def __init__(self):
    super().__init__(level=logging.WARNING)
    self.count = 0

  def emit(self, record):
    if "failed to converge" in record.getMessage():
      self.count += 1


def make_event(sigma, q, steps, poisson):
  gaussian = dp_accounting.GaussianDpEvent(sigma)
  if q == 1.0 and not poisson:
    return dp_accounting.SelfComposedDpEvent(gaussian, steps)
  return dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q, gaussian), steps)


def eps_rdp(event, counter):
  counter.count = 0
  t0 = time.perf_counter()
  acc = rdp.RdpAccountant()
  acc.compose(event)
  eps, order = acc.get_epsilon_and_optimal_order(DELTA)
  return eps, order, time.perf_counter() - t0, counter.count


def eps_pld(event, interval):
  t0 = time.perf_counter()
  acc = pld.PLDAccountant(value_discretization_interval=interval)
  acc.compose(event)
  eps = acc.get_epsilon(DELTA)
  return eps, time.perf_counter() - t0


def fmt(x):
  return "" if x is None else repr(float(x))


def header_lines():
  return [
      "# dp-accounting {}, python {}, numpy {}, scipy {}".format(
          importlib.metadata.version("dp-accounting"),
          platform.python_version(),
          importlib.metadata.version("numpy"),
          importlib.metadata.version("scipy")),
      "# Poisson-subsampled Gaussian, self-composed `steps` times; eps at "
      "delta={}; RdpAccountant default orders; PLDAccountant pessimistic, "
      "ADD_OR_REMOVE_ONE; q=1 uses plain GaussianDpEvent".format(DELTA),
      "# generated by bench/dp_reference.py ({})".format(
          "subset" if ARGS.subset else "full grid"),
  ]


def main():
  global ARGS
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", help="CSV path (default: bench/dp_reference_full.csv,"
                 " or privacy/tests/data/dp_accounting_reference.csv with "
                 "--subset)")
  p.add_argument("--subset", action="store_true",
                 help="only the fixed 21-row subset used by Rust tests")
  p.add_argument("--pld-interval", type=float, default=DEFAULT_PLD_INTERVAL,
                 help="PLD value_discretization_interval (default 1e-4)")
  ARGS = p.parse_args()
  out = ARGS.out or (DEFAULT_SUBSET_OUT if ARGS.subset else DEFAULT_FULL_OUT)
  cells = subset_grid() if ARGS.subset else full_grid()

  counter = _ConvergenceCounter()
  absl_logger = logging.getLogger("absl")
  absl_logger.addHandler(counter)
  absl_logger.propagate = False  # summarise instead of spamming stderr

  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  t_start = time.perf_counter()
  with open(tmp, "w", newline="") as f:
    for line in header_lines():
      f.write(line + "\n")
    w = csv.writer(f, lineterminator="\n")
    w.writerow(COLUMNS)
    for i, (sigma, q, steps) in enumerate(cells):
      interval = pld_interval_for(sigma, q, steps, ARGS.pld_interval)
      ev = make_event(sigma, q, steps, poisson=False)
      e_rdp, order, t_rdp, dropped = eps_rdp(ev, counter)
      e_pld, t_pld = eps_pld(ev, interval)
      e_rdp_q1 = e_pld_q1 = None
      if q == 1.0:
        ev_p = make_event(sigma, q, steps, poisson=True)
        e_rdp_q1 = eps_rdp(ev_p, counter)[0]
        e_pld_q1, t_q1 = eps_pld(ev_p, interval)
      w.writerow([
          fmt(sigma), fmt(q), steps, fmt(DELTA), fmt(e_rdp), fmt(e_pld),
          "%.4f" % t_rdp, "%.4f" % t_pld, repr(float(order)),
          "%g" % interval, dropped, fmt(e_rdp_q1), fmt(e_pld_q1),
      ])
      f.flush()
      print("[%2d/%d] sigma=%-4g q=%-5g steps=%-5d eps_rdp=%-12.6g "
            "(order %g, %d dropped) eps_pld=%-12.6g (interval %g) "
            "t_rdp=%.3fs t_pld=%.2fs%s"
            % (i + 1, len(cells), sigma, q, steps, e_rdp, order, dropped,
               e_pld, interval, t_rdp, t_pld,
               "" if q != 1.0 else " (poisson-wrapped: eps_pld=%.6g, %.2fs)"
               % (e_pld_q1, t_q1)), file=sys.stderr, flush=True)
  os.replace(tmp, out)
  print("wrote %d rows to %s in %.1fs" % (len(cells), out,
                                          time.perf_counter() - t_start),
        file=sys.stderr)


if __name__ == "__main__":
  main()
