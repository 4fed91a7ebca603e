"""Replay a fedfuse privacy ledger with Google's dp_accounting, independently of fedfuse.

Verifies the hash chain (BLAKE3 over each line with its final "hash" value emptied, and each
entry's prev_hash equal to the previous entry's hash), maps every recorded event onto
dp_accounting's DpEvent classes, and prints each store's epsilon by RDP and by PLD at the
store's delta beside what the store claimed and its budget.

Exit status: 0 all good; 1 a store is over budget or claimed less than the replay; 2 the
chain is broken.  Run it through replay_ledger.sh, which makes the venv.
"""

import argparse
import json
import sys
from collections import defaultdict

import blake3
import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

HASH_FIELD = ',"hash":"'
GENESIS = "0" * 64


def to_dp_event(e):
    kind = e["type"]
    if kind == "no_op":
        return dp_accounting.NoOpDpEvent()
    if kind == "gaussian":
        return dp_accounting.GaussianDpEvent(e["noise_multiplier"])
    if kind == "poisson_sampled":
        return dp_accounting.PoissonSampledDpEvent(e["sampling_probability"], to_dp_event(e["event"]))
    if kind == "self_composed":
        return dp_accounting.SelfComposedDpEvent(to_dp_event(e["event"]), e["count"])
    if kind == "composed":
        return dp_accounting.ComposedDpEvent([to_dp_event(x) for x in e["events"]])
    raise ValueError(f"unknown event type {kind!r}")


def verify(path):
    entries, prev = [], GENESIS
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            at = line.rfind(HASH_FIELD)
            if at < 0 or not line.endswith('"}'):
                raise SystemExit(f"{path}:{n}: broken chain: no trailing hash field")
            claimed = line[at + len(HASH_FIELD):-2]
            actual = blake3.blake3((line[:at] + HASH_FIELD + '"}').encode()).hexdigest()
            entry = json.loads(line)
            if claimed != actual or entry["hash"] != actual:
                print(f"{path}:{n}: broken chain: hash {claimed} does not match content {actual}", file=sys.stderr)
                sys.exit(2)
            if entry["prev_hash"] != prev or entry["seq"] != n - 1:
                print(f"{path}:{n}: broken chain: prev_hash or seq out of order", file=sys.stderr)
                sys.exit(2)
            prev = actual
            entries.append(entry)
    return entries


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ledger")
    ap.add_argument("--json", action="store_true", help="one JSON object per store")
    args = ap.parse_args()
    by_store = defaultdict(list)
    for e in verify(args.ledger):
        by_store[e["store"]].append(e)
    bad = 0
    if not args.json:
        print(f"{'store':<16} {'releases':>8} {'eps_rdp':>10} {'eps_pld':>10} {'claimed':>10} {'budget':>8}  verdict")
    for store, entries in sorted(by_store.items()):
        last = entries[-1]
        delta = last["delta"]
        events = [to_dp_event(e["event"]) for e in entries]
        rdp = rdp_privacy_accountant.RdpAccountant()
        pld = pld_privacy_accountant.PLDAccountant()
        for ev in events:
            rdp.compose(ev)
            pld.compose(ev)
        eps_rdp, eps_pld = rdp.get_epsilon(delta), pld.get_epsilon(delta)
        claimed = min(last["spent_after"]["epsilon_rdp"], last["spent_after"]["epsilon_pld"])
        replayed = min(eps_rdp, eps_pld)
        over = replayed > last["epsilon_max"] * (1 + 1e-9)
        # fedfuse claims the tighter of its two accountants; allow the 2% PLD tolerance.
        under = claimed < replayed * 0.98
        bad += over or under
        verdict = ", ".join(v for v, f in (("OVER BUDGET", over), ("UNDER-CLAIMED", under)) if f) or "ok"
        if args.json:
            print(json.dumps({"store": store, "releases": len(entries), "delta": delta, "eps_rdp": eps_rdp,
                              "eps_pld": eps_pld, "eps_claimed": claimed, "epsilon_max": last["epsilon_max"],
                              "ok": verdict == "ok"}))
        else:
            print(f"{store:<16} {len(entries):>8} {eps_rdp:>10.4f} {eps_pld:>10.4f} {claimed:>10.4f} "
                  f"{last['epsilon_max']:>8.3f}  {verdict}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
