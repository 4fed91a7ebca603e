#!/usr/bin/env python3
"""Renders bench/federation.sh's JSON reports into BENCHMARKS.md: the main table into
`federation-ml100k`, and each family of runs into its own section (`federation-served`,
`-tail-average`, `-rounds`, `-server-step`, `-exact-softmax`, `-local-work`,
`-context-windows`, `-pretrained`, `-dp-subset`). Standard library only; runs that have no report yet are left out, and a
section none of whose runs has a report is left as it was."""

import argparse
import json
import re
from pathlib import Path


def load(reports: Path, name: str):
    path = reports / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mean_std(values):
    n = len(values)
    m = sum(values) / n
    sd = (sum((v - m) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return m, sd


def cell(values):
    """`mean ± std (n)` over seeds, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    m, sd = mean_std(values)
    return f"{m:.4f} ± {sd:.4f}"


def centralized(benchmarks: str):
    """Mean test HR@10 / NDCG@10 (full) of the fused row the quality benchmark wrote."""
    m = re.search(r"\| fused \(all branches\) \| ([0-9.]+)[^|]*\| ([0-9.]+)", benchmarks)
    return (float(m.group(1)), float(m.group(2))) if m else None


def centralized_distinct(benchmarks: str):
    """The quality table's fused HR@10 (full) on the test shoppers whose last two events have
    distinct timestamps, with that slice's size and the number of test shoppers."""
    m = re.search(r"\| fused \(all branches\) \|(?:[^|]*\|){4} ([0-9.]+)", benchmarks)
    n = re.search(r"on the ([0-9]+) of ([0-9]+) test shoppers whose last two events have distinct timestamps", benchmarks)
    return (float(m.group(1)), int(n.group(1)), int(n.group(2))) if m and n else None


def local_only(benchmarks: str):
    """Mean test HR@10 (full) of the local-only row already in the federation table."""
    m = re.search(r"\| local-only \(each store alone\) \|[^|]*\|[^|]*\| ([0-9.]+)", benchmarks)
    return float(m.group(1)) if m else None


# The sections a render may write (`--sections`); None: every one with reports.
ONLY = None


def replace_section(md: str, tag: str, table: str) -> str:
    if ONLY is not None and tag not in ONLY:
        return md
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    block = f"{begin}\n{table}{end}"
    b, e = md.find(begin), md.find(end)
    return md[:b] + block + md[e + len(end):] if 0 <= b < e else md.rstrip() + "\n\n" + block + "\n"


def seed_cells(r):
    """A served run's test metrics, worst store and last model: the cells every served-model
    table shares."""
    f, last = r["final"], r["last"]
    w = f.get("worst_store") or {}
    return (" | ".join(f"{f[k]:.4f}" for k in ["hr10_full", "ndcg10_full", "hr10_sampled", "ndcg10_sampled"])
            + f" | {w.get('hr10', float('nan')):.4f} ({w.get('store', '?')}) | {last['hr10_full']:.4f} | "
            f"{last['ndcg10_full']:.4f}")


def mean_cells(reports):
    """The mean ± std of `seed_cells` over the seeds (the served HR@10 in bold)."""
    return (f"**{cell([r['final']['hr10_full'] for r in reports])}** | {cell([r['final']['ndcg10_full'] for r in reports])} | "
            f"{cell([r['final']['hr10_sampled'] for r in reports])} | {cell([r['final']['ndcg10_sampled'] for r in reports])} | "
            f"{cell([(r['final'].get('worst_store') or {}).get('hr10', float('nan')) for r in reports])} | "
            f"{cell([r['last']['hr10_full'] for r in reports])} | {cell([r['last']['ndcg10_full'] for r in reports])}")


def ratio_sentence(reports, central, local_hr, last_label, local_where):
    m = mean_std([r["final"]["hr10_full"] for r in reports])[0]
    last = mean_std([r["last"]["hr10_full"] for r in reports])[0]
    ratios = []
    if central:
        ratios.append(f"served / centralized HR@10 = {m / central[0]:.3f} ({last_label}: {last / central[0]:.3f}; "
                      f"centralized {central[0]:.4f}, the quality table's fused row)")
    if local_hr:
        ratios.append(f"served / local-only = {m / local_hr:.2f} (local-only {local_hr:.4f}{local_where})")
    return "\n" + "; ".join(ratios) + "." if ratios else None


def per_store_table(reports):
    out = ["\nHR@10 (full) of the served model per store (mean over the seeds):\n", "| store | shoppers | served |", "|---|---|---|"]
    r0 = reports[0]
    for st in sorted(r0["final"]["per_store"]):
        served = [r["final"]["per_store"][st]["hr10"] for r in reports if st in r["final"]["per_store"]]
        out.append(f"| {st} | {r0['final']['per_store'][st]['cases']} | {cell(served)} |")
    return out


def served_section(reports, central, local_hr, note):
    """The federation that serves the best federated-validated version, seed by seed, beside the
    last round's model of the same runs."""
    out = ["## Federation serving the best validated model (MovieLens-100K, 11 ZIP stores)\n"]
    r0 = reports[0]
    c = r0["config"]
    out.append(
        f"`bench/federation.sh --only fed_b32e4` (quickstart on loopback, as above): dim {c['dim']}, max_len "
        f"{c['max_len']}, head {c['head']}; {c['rounds']} rounds, every store trains {c['local_epochs']} local "
        f"epochs of batches of {c['batch_size']} windows, AdamW lr {c['lr']:g} (constant), keeping its moments; "
        "FedAvg weighted by examples. Before training, each store ranks the offered model for its own validation "
        "shoppers and reports HR@10 and their count; the aggregator pools the reports per version and serves the "
        "best one (the test shoppers are never consulted: test numbers of the other versions are in the report "
        "for the reader only). *Served* is that model, *last* the last round's model of the same run. "
        + note + "\n"
    )
    out.append("| seed | served version | federated validation HR@10 | HR@10 full | NDCG@10 full | "
               "HR@10 sampled | NDCG@10 sampled | worst store HR@10 | last model HR@10 full | last NDCG@10 full | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        f = r["final"]
        val = [x.get("federated_validation_hr10") for x in r["rounds"] if x.get("version") == f["version"]]
        rounds_of = [x["round"] for x in r["rounds"] if x.get("version") == f["version"]]
        out.append(
            f"| {r['config']['seed']} | {f['version']} (after round {rounds_of[0] if rounds_of else '?'}) | "
            + (f"{val[0]:.4f}" if val and val[0] is not None else "–") + " | "
            + seed_cells(r) + f" | {f['seconds']:.0f} |"
        )
    out.append(f"| **mean ± std** | | | {mean_cells(reports)} | "
               f"{mean_std([r['final']['seconds'] for r in reports])[0]:.0f} |")
    ratios = ratio_sentence(reports, central, local_hr, "last", ", the table above")
    if ratios:
        out.append(ratios)
    out.append(f"\nSeed {r0['config']['seed']} by round: test HR@10 (full) of the model after the round, and the "
               "federated validation HR@10 the stores measured for it when it was offered next:\n")
    rows = [x for x in r0["rounds"] if x["round"] > 0]
    out.append("| round | " + " | ".join(str(x["round"]) for x in rows) + " |")
    out.append("|---" * (len(rows) + 1) + "|")
    out.append("| test HR@10 | " + " | ".join(f"{x['hr10_full']:.4f}" for x in rows) + " |")
    out.append("| validation HR@10 | " + " | ".join(
        f"{x['federated_validation_hr10']:.4f}" if x.get("federated_validation_hr10") is not None else "–" for x in rows) + " |")
    out.extend(per_store_table(reports))
    return "\n".join(out) + "\n"


def tail_section(reports, central, local_hr, note):
    """The federation that serves the average of its last K global models, K chosen on the
    stores' validation shoppers, seed by seed, beside the last model of the same runs."""
    out = ["## Federation serving the average of its last models (MovieLens-100K, 11 ZIP stores)\n"]
    c = reports[0]["config"]
    out.append(
        f"`bench/federation.sh --only fed_tail30` (quickstart on loopback, as above): dim {c['dim']}, max_len "
        f"{c['max_len']}, head {c['head']}; {c['rounds']} rounds of the first recipe ({c['local_epochs']} local "
        f"epochs, batches of {c['batch_size']} windows, AdamW lr {c['lr']:g} constant, FedAvg weighted by examples), "
        "serving `--serve tail-average:auto`: after the last round the averages of the last K committed global "
        "models, K in 1 (the last model), 2, 3, 5, 8, 10, 13, are ranked by HR@10 (full) over every store's "
        "validation shoppers (pooled by the harness as the stores would report them; the test shoppers are never "
        "consulted) and the best is served. The averaged model is never trained from: the federation is the same "
        "as without it. " + note + "\n"
    )
    out.append("| seed | served K (rounds) | validation HR@10 | HR@10 full | NDCG@10 full | HR@10 sampled | "
               "NDCG@10 sampled | worst store HR@10 | last model HR@10 full | last NDCG@10 full | round 20 HR@10 | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    def chosen(r):
        cands = r.get("tail_average_candidates") or []
        best = None
        for x in cands:
            if best is None or (x["validation_hr10_full"], x["validation_ndcg10_full"]) > (
                    best["validation_hr10_full"], best["validation_ndcg10_full"]):
                best = x
        return best
    r20 = []
    for r in reports:
        b = chosen(r)
        a20 = at_round(r, 20)
        r20.append(a20["hr10_full"] if a20 else float("nan"))
        out.append(
            f"| {r['config']['seed']} | {b['k']} ({b['rounds'][0]}–{b['rounds'][-1]}) | {b['validation_hr10_full']:.4f} | "
            + seed_cells(r) + f" | {r20[-1]:.4f} | {r['final']['seconds']:.0f} |"
        )
    out.append(f"| **mean ± std** | | | {mean_cells(reports)} | {cell(r20)} | "
               f"{mean_std([r['final']['seconds'] for r in reports])[0]:.0f} |")
    ratios = ratio_sentence(reports, central, local_hr, "last model", "")
    if ratios:
        out.append(ratios)
    diffs = [r["final"]["hr10_full"] - r["last"]["hr10_full"] for r in reports]
    out.append(
        f"\nServed minus last model, HR@10 (full), seed by seed: {', '.join(f'{d:+.4f}' for d in diffs)}. "
        "The candidates' validation scores differ by less than the ~0.014 standard error of a 943-shopper "
        "hit rate, so the choice of K is mostly noise; compare the *last model* column with the 20-round "
        "rows above for what the extra rounds bring."
    )
    ks = [x["k"] for x in reports[0].get("tail_average_candidates") or []]
    out.append("\nEvery candidate, seed by seed: validation HR@10 (what chose) / test HR@10 (full), for the reader:\n")
    out.append("| seed | " + " | ".join(f"K = {k}" for k in ks) + " |")
    out.append("|---" * (len(ks) + 1) + "|")
    for r in reports:
        by_k = {x["k"]: x for x in r.get("tail_average_candidates") or []}
        out.append(f"| {r['config']['seed']} | " + " | ".join(
            f"{by_k[k]['validation_hr10_full']:.4f} / {by_k[k]['hr10_full']:.4f}" if k in by_k else "–" for k in ks) + " |")
    out.extend(per_store_table(reports))
    return "\n".join(out) + "\n"


def rounds_section(constant, held, central, local_hr, note):
    """Where more rounds take the first recipe, with a constant rate and with a rate held for
    most of the run and decayed over the rest, seed by seed."""
    c = constant[0]["config"] if constant else held[0]["config"]
    out = ["## Federation for 40 rounds, constant or late-decayed learning rate (MovieLens-100K, 11 ZIP stores)\n"]
    hold = ""
    if held:
        h = held[0]["config"]
        kept = round(h["rounds"] * h.get("lr_hold_fraction", 0.0))
        hold = (f" *Held cosine* offers lr {h['lr']:g} for rounds 1–{kept + 1}, then decays it on a cosine towards "
                f"{h['lr'] * h['min_lr_fraction']:.2g} after round {h['rounds']} "
                f"(`--lr-schedule cosine --lr-hold-fraction {h['lr_hold_fraction']:g}`, `[plan] hold_rounds`).")
    out.append(
        f"`bench/federation.sh --only fed_rounds40,fed_hold40` (quickstart on loopback, as above): dim {c['dim']}, "
        f"max_len {c['max_len']}, head {c['head']}; {c['rounds']} rounds of the first recipe ({c['local_epochs']} "
        f"local epochs, batches of {c['batch_size']} windows, AdamW lr {c['lr']:g}, FedAvg weighted by examples), the "
        "last model served." + hold + " *Rounds 31–40* is the mean test HR@10 of the models after rounds 31 to 40: the "
        "level the global model circles, which one last model samples with a round-to-round spread of about ±0.005. "
        + note + "\n"
    )
    out.append("| run | seed | HR@10 full | NDCG@10 full | HR@10 sampled | NDCG@10 sampled | worst store HR@10 | "
               "HR@10 after round 20 | after round 30 | rounds 31–40 | HR@10 full, distinct last timestamps | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def level(r):
        xs = [x["hr10_full"] for x in r["rounds"] if 31 <= x["round"] <= 40]
        return sum(xs) / len(xs) if xs else float("nan")

    def row(label, r):
        f = r["final"]
        w = f.get("worst_store") or {}
        return (f"| {label} | {r['config']['seed']} | "
                + " | ".join(f"{f[k]:.4f}" for k in ["hr10_full", "ndcg10_full", "hr10_sampled", "ndcg10_sampled"])
                + f" | {w.get('hr10', float('nan')):.4f} ({w.get('store', '?')}) | "
                + " | ".join(f"{at_round(r, k)['hr10_full']:.4f}" if at_round(r, k) else "–" for k in (20, 30))
                + f" | {level(r):.4f} | {f.get('hr10_full_distinct_timestamps', float('nan')):.4f} | {f['seconds']:.0f} |")

    for label, runs in (("constant", constant), ("held cosine", held)):
        for r in runs:
            out.append(row(label, r))
        if len(runs) > 1:
            col = lambda key: cell([r["final"][key] for r in runs])
            at = lambda k: cell([at_round(r, k)["hr10_full"] for r in runs if at_round(r, k)])
            out.append(f"| **{label}, mean ± std** | | **{col('hr10_full')}** | {col('ndcg10_full')} | "
                       f"{col('hr10_sampled')} | {col('ndcg10_sampled')} | "
                       f"{cell([(r['final'].get('worst_store') or {}).get('hr10', float('nan')) for r in runs])} | "
                       f"{at(20)} | {at(30)} | {cell([level(r) for r in runs])} | "
                       f"{col('hr10_full_distinct_timestamps')} | {mean_std([r['final']['seconds'] for r in runs])[0]:.0f} |")
    if constant and central:
        m = mean_std([r["final"]["hr10_full"] for r in constant])[0]
        lv = mean_std([level(r) for r in constant])[0]
        out.append(f"\nConstant, 40 rounds: last model / centralized HR@10 = {m / central[0]:.3f}, rounds 31–40 / "
                   f"centralized = {lv / central[0]:.3f} (centralized {central[0]:.4f}, the quality table's fused row)"
                   + (f"; last model / local-only = {m / local_hr:.2f} (local-only {local_hr:.4f})" if local_hr else "")
                   + ".")
    pairs = [(a, b) for a in constant for b in held if a["config"]["seed"] == b["config"]["seed"]]
    if pairs:
        a, b = pairs[0]
        ks = [k for k in range(20, 41, 2) if at_round(a, k) and at_round(b, k)]
        out.append(f"\nSeed {a['config']['seed']} by round, constant against held cosine (test HR@10 full; mean local "
                   "train loss, which rises as the rate falls: a store's loss is measured while it trains, and a smaller "
                   "step fits its own shoppers less within the round):\n")
        out.append("| round | " + " | ".join(str(k) for k in ks) + " |")
        out.append("|---" * (len(ks) + 1) + "|")
        for label, r in (("constant HR@10", a), ("held cosine HR@10", b)):
            out.append(f"| {label} | " + " | ".join(f"{at_round(r, k)['hr10_full']:.4f}" for k in ks) + " |")
        for label, r in (("constant train loss", a), ("held cosine train loss", b)):
            out.append(f"| {label} | " + " | ".join(f"{at_round(r, k)['train_loss']:.3f}" for k in ks) + " |")
    if constant:
        out.extend(per_store_table(constant))
    return "\n".join(out) + "\n"


def server_step_section(screens, long, constant, central, local_hr, note):
    """Server step screen (seed 1, 20 rounds) and the chosen step over 3 seeds, each beside the
    plain FedAvg step (lr 1) of the 40-round constant runs at the same round: those runs are
    deterministic for a seed, so their first rounds are the plain run of the same length."""
    def mean_of(r, lo, hi):
        xs = [x["hr10_full"] for x in r["rounds"] if lo <= x["round"] <= hi]
        return sum(xs) / len(xs) if xs else float("nan")

    def step_of(r):
        c = r["config"]
        if c.get("drift_correction"):
            return "FedAvg, stores correcting their drift (SCAFFOLD-style control variates)"
        if c.get("proximal_mu", 0) > 0:
            return f"FedAvg, stores with FedProx μ {c['proximal_mu']:g} (its loss includes the proximal term)"
        if c.get("server_optimizer") == "fedavgm":
            return f"FedAvgM, lr {c['server_lr']:g}, β {c.get('server_momentum', float('nan')):g}"
        return f"FedAvg, server lr {c['server_lr']:g}"

    c = (long or screens or constant)[0]["config"]
    out = ["## Federation: the server step and the stores' drift (MovieLens-100K, 11 ZIP stores)\n"]
    out.append(
        "`bench/federation.sh --only fed_slr15,fed_slr20,fed_m05,fed_prox01,fed_drift` (seed 1) and `SEEDS=\"1 2 3\" bench/federation.sh "
        f"--only fed_slr15x30` (quickstart on loopback, as above): dim {c['dim']}, max_len {c['max_len']}, head "
        f"{c['head']}; the first recipe ({c['local_epochs']} local epochs, batches of {c['batch_size']} windows, "
        f"AdamW lr {c['lr']:g} constant, aggregate weighted by examples), the last model served. The server adds "
        "lr × the aggregate (lr > 1 extrapolates it, the idea behind FedExP, Jhunjhunwala et al. 2023: non-IID stores' "
        "deltas partly cancel in their mean, which makes the mean step shorter than the stores' own), or with FedAvgM lr × a velocity v ← β·v + Δ; the FedProx row keeps the server step and adds (μ/2)·‖w − w_global‖² to every store's local loss, which holds a store near the model it was offered (less drift, less progress per round); the drift row has every store add, after each local step, lr × (c − cᵢ) with cᵢ its own mean step last round and c the global model's move over that round per step (SCAFFOLD's control variates, Karimireddy et al. 2020, in AdamW's step space, from what a store already holds). The lr 1 rows are the "
        "first rounds of the 40-round constant runs (`fed_rounds40`), which are reproducible for a seed, so they are "
        "the plain run of the same length. *Rounds 16–20* (*21–30*) is the mean test HR@10 of the models after those "
        "rounds: the level, which one last model samples with a round-to-round spread of about ±0.005. " + note + "\n")
    if screens:
        out.append("| seed 1, 20 rounds | HR@10 full after round 20 | NDCG@10 full | rounds 16–20 mean HR@10 | "
                   "mean local train loss, round 20 |")
        out.append("|---|---|---|---|---|")
        base = [r for r in constant if r["config"]["seed"] == 1]
        for label, r in ([("FedAvg, server lr 1", base[0])] if base else []) + [(step_of(r), r) for r in screens]:
            x = at_round(r, 20)
            out.append(f"| {label} | {x['hr10_full']:.4f} | {x['ndcg10_full']:.4f} | {mean_of(r, 16, 20):.4f} | "
                       f"{x['train_loss']:.3f} |")
        out.append("\nOne seed: a 943-shopper HR@10 has a standard error of about 0.013, so this screen only ranks the "
                   "steps for the 3-seed run below.")
    if long:
        rounds = long[0]["config"]["rounds"]
        seeds = sorted(r["config"]["seed"] for r in long)
        plain = [r for r in constant if r["config"]["seed"] in seeds and at_round(r, rounds)]
        out.append(f"\n{rounds} rounds, seeds {', '.join(map(str, seeds))} (mean ± std):\n")
        out.append(f"| server step | HR@10 full after round {rounds} | NDCG@10 full | HR@10 sampled | NDCG@10 sampled | "
                   f"rounds {rounds - 9}–{rounds} mean HR@10 | worst store HR@10 | / centralized | / local-only | "
                   "per seed HR@10 | wall s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, runs in (("FedAvg, server lr 1", plain), (step_of(long[0]), long)):
            if not runs:
                continue
            xs = [at_round(r, rounds) for r in runs]
            hr = [x["hr10_full"] for x in xs]
            m = mean_std(hr)[0]
            is_long = runs is long
            worst = cell([(r["final"].get("worst_store") or {}).get("hr10", float("nan")) for r in runs]) if is_long else "–"
            wall = f"{mean_std([r['final']['seconds'] for r in runs])[0]:.0f}" if is_long else "–"
            out.append(f"| {label} | **{cell(hr)}** | {cell([x['ndcg10_full'] for x in xs])} | "
                       f"{cell([x['hr10_sampled'] for x in xs])} | {cell([x['ndcg10_sampled'] for x in xs])} | "
                       f"{cell([mean_of(r, rounds - 9, rounds) for r in runs])} | {worst} | "
                       + (f"{m / central[0]:.3f}" if central else "–") + " | "
                       + (f"{m / local_hr:.2f}" if local_hr else "–") + " | "
                       + ", ".join(f"{v:.4f}" for v in hr) + f" | {wall} |")
        out.append(f"\nPer store, {step_of(long[0])}:")
        out.extend(per_store_table(long))
    return "\n".join(out) + "\n"


def rounds40_at_20(benchmarks: str):
    """HR@10 after round 20 of each constant 40-round run, by seed, from the federation-rounds
    table already written (those runs are reproducible for a seed: their first 20 rounds are the
    plain 20-round run)."""
    out = {}
    for m in re.finditer(r"^\| constant \| (\d+) \|(.*)$", benchmarks, re.M):
        cells = [c.strip() for c in m.group(2).split("|")]
        out[int(m.group(1))] = float(cells[5])
    return out


def rounds40_final(benchmarks: str):
    """Last-model HR@10 and the rounds 31-40 mean of each constant 40-round run (sampled
    softmax), by seed, from the federation-rounds table already written."""
    out = {}
    for m in re.finditer(r"^\| constant \| (\d+) \|(.*)$", benchmarks, re.M):
        cells = [c.strip() for c in m.group(2).split("|")]
        out[int(m.group(1))] = (float(cells[0]), float(cells[7]))
    return out


def exact_section(exact, plain, earlier, long, central, note, sampled40=None):
    """The stores' exact softmax over every item against the sampled one (256 in-batch + 256
    uniform candidates, log-q corrected), both the first recipe for 20 rounds."""
    def mean_of(r, lo, hi):
        xs = [x["hr10_full"] for x in r["rounds"] if lo <= x["round"] <= hi]
        return sum(xs) / len(xs) if xs else float("nan")

    c = exact[0]["config"]
    out = ["## Federation with the exact softmax in the stores (MovieLens-100K, 11 ZIP stores)\n"]
    out.append(
        "`SEEDS=\"1 2 3\" bench/federation.sh --only fed_exact,fed_f32` (quickstart on loopback, as above): the first "
        f"recipe ({c['local_epochs']} local epochs, batches of {c['batch_size']} windows, AdamW lr {c['lr']:g} constant, "
        "FedAvg weighted by examples), 20 rounds, the last model served; the stores' loss is the softmax over all "
        f"{c['uniform']} items of MovieLens-100K (`--in-batch 0 --uniform {c['uniform']}`: the candidates cover the catalog, "
        "so no sampling and no log-q correction) instead of the sampled softmax over 256 in-batch + 256 uniform candidates. "
        "A store's batch of 8 windows holds at most 400 targets, so its in-batch candidates and their log-q correction come "
        "from a small, store-skewed sample; the exact softmax is the loss the sampled one estimates, without that noise "
        "(centralized, batches of 32 windows, `train_centralized --batch-size 32 --in-batch 0 --uniform 1682`: HR@10 0.2153 "
        "and 0.2057 for seeds 1 and 2, against 0.2142 and 0.1994 sampled in a quality run of the same model code whose table "
        "did not land: +0.0011 and +0.0063, so part of the gain may be the model's, not only the federation's). *Sampled* is "
        "`fed_f32` of the same build where it ran, else the round 20 of the constant 40-round run of that seed "
        "(federation-rounds table), made by an earlier build: reproducible for a seed within one build, but not across "
        "builds (seed 1: 0.1813 there, 0.1845 as `fed_f32` here), so those rows compare with run-to-run noise of that size. " + note + "\n")
    out.append("| seed | loss | HR@10 full after round 20 | NDCG@10 full | HR@10 sampled | NDCG@10 sampled | "
               "rounds 16–20 mean HR@10 | worst store HR@10 | / centralized | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    by_seed = {r["config"]["seed"]: r for r in plain}
    ex_hr, pl_hr = [], []
    for r in sorted(exact, key=lambda r: r["config"]["seed"]):
        seed = r["config"]["seed"]
        rows = []
        if seed in by_seed:
            rows.append(("sampled (512 candidates)", by_seed[seed]))
        elif seed in earlier:
            pl_hr.append(earlier[seed])
            out.append(f"| {seed} | sampled (512 candidates), 40-round run at round 20 | {earlier[seed]:.4f} | | | | | | "
                       + (f"{earlier[seed] / central[0]:.3f}" if central else "–") + " | |")
        rows.append(("exact (all items)", r))
        for label, run in rows:
            x = at_round(run, 20)
            w = run["final"].get("worst_store") or {}
            (ex_hr if run is r else pl_hr).append(x["hr10_full"])
            out.append(f"| {seed} | {label} | {x['hr10_full']:.4f} | {x['ndcg10_full']:.4f} | {x['hr10_sampled']:.4f} | "
                       f"{x['ndcg10_sampled']:.4f} | {mean_of(run, 16, 20):.4f} | {w.get('hr10', float('nan')):.4f} "
                       f"({w.get('store', '?')}) | " + (f"{x['hr10_full'] / central[0]:.3f}" if central else "–")
                       + f" | {run['final']['seconds']:.0f} |")
    if len(ex_hr) > 1:
        out.append(f"| **mean** | sampled | **{cell(pl_hr)}** | | | | | | "
                   + (f"{mean_std(pl_hr)[0] / central[0]:.3f}" if central else "–") + " | |")
        out.append(f"| **mean** | exact | **{cell(ex_hr)}** | | | | | | "
                   + (f"{mean_std(ex_hr)[0] / central[0]:.3f}" if central else "–") + " | |")
        diffs = [e - p for e, p in zip(ex_hr, pl_hr)]
        out.append(f"\nExact minus sampled, seed by seed: {', '.join(f'{d:+.4f}' for d in diffs)} (mean "
                   f"{mean_std(diffs)[0]:+.4f} ± {mean_std(diffs)[1]:.4f}): ahead in {sum(d > 0 for d in diffs)} of "
                   f"{len(diffs)} seeds, a mean gain within the seeds' spread, so a lead to confirm with more rounds "
                   "and seeds, not a result.")
    if not long:
        out.append("\nPer store, exact softmax, 20 rounds:")
        out.extend(per_store_table(exact))
    if long:
        rounds = long[0]["config"]["rounds"]
        xs = [at_round(r, rounds) for r in long]
        hr = [x["hr10_full"] for x in xs]
        out.append(f"\n{rounds} rounds, exact softmax, seeds {', '.join(str(r['config']['seed']) for r in long)}: "
                   f"HR@10 full **{cell(hr)}** (" + ", ".join(f"{v:.4f}" for v in hr) + f"), NDCG@10 "
                   f"{cell([x['ndcg10_full'] for x in xs])}, sampled {cell([x['hr10_sampled'] for x in xs])} / "
                   f"{cell([x['ndcg10_sampled'] for x in xs])}, rounds {rounds - 9}–{rounds} mean "
                   f"{cell([mean_of(r, rounds - 9, rounds) for r in long])}, worst store "
                   f"{cell([(r['final'].get('worst_store') or {}).get('hr10', float('nan')) for r in long])}"
                   + (f", / centralized {mean_std(hr)[0] / central[0]:.3f}" if central else "")
                   + f"; wall {mean_std([r['final']['seconds'] for r in long])[0]:.0f} s.")
        pairs = [(r["config"]["seed"], at_round(r, rounds)["hr10_full"], mean_of(r, rounds - 9, rounds)) for r in long]
        pairs = [(s, e, t, (sampled40 or {}).get(s)) for s, e, t in pairs]
        if rounds == 40 and any(p[3] for p in pairs):
            out.append(f"\n| seed | exact, last model | exact, rounds 31–40 mean | sampled, last model | sampled, rounds 31–40 mean | exact − sampled (last) |")
            out.append("|---|---|---|---|---|---|")
            for seed, e, t, sam in pairs:
                if sam:
                    out.append(f"| {seed} | {e:.4f} | {t:.4f} | {sam[0]:.4f} | {sam[1]:.4f} | {e - sam[0]:+.4f} |")
            out.append("\nThe sampled 40-round runs are the federation-rounds table's constant rows (an earlier build; "
                       "within a build a seed's run repeats exactly).")
        out.append(f"\nPer store, exact softmax, {rounds} rounds:")
        out.extend(per_store_table(long))
    return "\n".join(out) + "\n"


def second_half(report, key="hr10_full"):
    """Mean of one per-round number (by default test HR@10, full) over the rounds of the run's
    second half, skipping rounds that lack it."""
    n = report["config"]["rounds"]
    xs = [x[key] for x in report["rounds"] if x["round"] > n // 2 and x.get(key) is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def local_work_section(runs, seeded, central, note):
    """How local work per round, dropout, and the stores themselves shape the rounds: test
    HR@10 (full) of the model after each round, beside the validation HR@10 the stores pooled
    for it. `runs` is [(label, report)] of the first seed, `seeded` [(label, [every seed's
    report])] for the runs made with more than one seed."""
    rounds = [1, 2, 4, 7, 10, 15, 20, 25, 30]
    out = ["## Federation: local work per round, dropout, the stores' optimiser state, and one pooled store (MovieLens-100K)\n"]
    c = runs[0][1]["config"]
    out.append(
        "`bench/federation.sh --only fed_e3,fed_e3d04,fed_e4x30,fed_e3nest,fed_e3forget,fed_e3pm,fed_e2,fed_e2b4,fed_e2lr5,fed_e2ctx25,fed_e3ctx25,fed_pool_e2` (quickstart on loopback, as above), seed "
        f"{c['seed']}: dim 64, max_len 50, head 16, batches of 8 windows unless the row says otherwise, AdamW constant at the row's lr, each store keeping "
        "its moments across rounds unless the row says otherwise, FedAvg weighted by "
        "examples (the server step FedAvg's unless the row says otherwise), the last model served. *Pooled* puts every shopper into one store (`--pool-stores`): the same "
        "store agent, recipe and rounds with nothing to average, which is centralized training at the federation's "
        "recipe (constant rate, batches of 8, the optimiser's moments kept across rounds), evaluated the same way. "
        "Each cell is test HR@10 (full) of the model after that round, then the validation HR@10 the stores measured "
        "for it in brackets; *peak* is the best test cell, which no one could have picked without the test "
        "shoppers. " + note + "\n")
    shown = [k for k in rounds if any(at_round(r, k) for _, r in runs)]
    out.append("| run | local epochs | lr | dropout | " + " | ".join(f"round {k}" for k in shown)
               + " | mean of the second half of the rounds | peak test HR@10 (round) | train loss, last round | wall s |")
    out.append("|---|---|---|---|" + "---|" * len(shown) + "---|---|---|---|")
    for label, r in runs:
        cells = []
        for k in shown:
            x = at_round(r, k)
            if not x:
                cells.append("")
                continue
            val = x.get("federated_validation_hr10")
            cells.append(f"{x['hr10_full']:.4f}" + (f" ({val:.4f})" if val is not None else ""))
        best = max(r["rounds"][1:], key=lambda x: x["hr10_full"])
        last = r["rounds"][-1]
        out.append(f"| {label} | {r['config']['local_epochs']} | {r['config']['lr']:.2g} | {r['config'].get('dropout', 0.2)} | "
                   + " | ".join(cells) + f" | {second_half(r):.4f} | {best['hr10_full']:.4f} ({best['round']}) | "
                   f"{last['train_loss']:.3f} | {r['final']['seconds']:.0f} |")
    if central:
        out.append(f"\nCentralized (quality table, early-stopped on validation, batches of 32, lr 1e-3 warm-up + "
                   f"cosine): {central[0]:.4f}; 0.97 × that = {0.97 * central[0]:.4f}.")
    if seeded:
        out.append("\nOver seeds: HR@10 (full) after the last round, and the mean over the second half of the rounds "
                   "(the level the model circles, which one last model samples with a round-to-round spread of "
                   "about ±0.005):\n")
        out.append("| run | seeds | rounds | HR@10 after the last round | mean of rounds in the second half | "
                   "per seed (second half) | / centralized (second half) |")
        out.append("|---|---|---|---|---|---|---|")
        for label, reports in seeded:
            n = reports[0]["config"]["rounds"]
            lo = n // 2 + 1
            last = [at_round(r, n)["hr10_full"] for r in reports]
            half = [second_half(r) for r in reports]
            out.append(f"| {label} | {', '.join(str(r['config']['seed']) for r in reports)} | {lo}–{n} | {cell(last)} | "
                       f"**{cell(half)}** | {', '.join(f'{h:.4f}' for h in half)} | "
                       + (f"{mean_std(half)[0] / central[0]:.3f}" if central else "–") + " |")
        # Runs of the same rounds and seeds as the first, paired seed by seed with it.
        base_label, base = seeded[0]
        seeds_of = lambda rs: [r["config"]["seed"] for r in rs]
        for label, reports in seeded[1:]:
            if seeds_of(reports) != seeds_of(base) or reports[0]["config"]["rounds"] != base[0]["config"]["rounds"]:
                continue
            diffs = [second_half(r) - second_half(b) for r, b in zip(reports, base)]
            ahead = sum(d > 0 for d in diffs)
            m, sd = mean_std(diffs)
            out.append(f"\n{label} minus {base_label.lower()}, seed by seed (mean of the second half): "
                       + ", ".join(f"{d:+.4f}" for d in diffs)
                       + f" (mean {m:+.4f} ± {sd:.4f}): ahead in {ahead} of {len(diffs)} seeds.")
    return "\n".join(out) + "\n"


def context_section(runs, paired_with, central, distinct, local_hr, note):
    """The federation whose stores train on context windows, seed by seed: `runs` is
    [(label, [every seed's report])], `paired_with` what each pairs with, for the seed-by-seed
    difference ({label: (what that run is, [its reports])})."""
    out = ["## Federation on context windows (MovieLens-100K, 11 ZIP stores)\n"]
    c = runs[0][1][0]["config"]
    half = f"rounds {c['rounds'] // 2 + 1}–{c['rounds']}"
    out.append(
        "`SEEDS=\"1 2 3\" bench/federation.sh --only " + ",".join(n for n, _, _, _ in CONTEXT_RUNS) + "` (quickstart on loopback, "
        f"as above): dim {c['dim']}, max_len {c['max_len']}, head {c['head']}; {c['rounds']} rounds, every store "
        f"trains the row's local epochs of batches of {c['batch_size']} windows, AdamW lr {c['lr']:g} constant, keeping "
        "its moments; FedAvg weighted by examples; the last model served. Every store cuts its shoppers' "
        f"histories into context windows (`--window-stride {c['window_stride']}`, `[training] window_stride`): "
        f"each window reads {c['max_len']} items and scores only its last {c['window_stride']}, so a prediction "
        f"trains from at least {c['max_len'] - c['window_stride']} items of history once a shopper has more than "
        f"{c['max_len']} events, as it is served (disjoint windows train a window's first predictions from one or "
        f"two items). *{half.capitalize()}* is the mean test HR@10 of the models after those rounds: the level, which one "
        "last model samples with a round-to-round spread of about ±0.005; the stores' validation HR@10 is the same "
        "mean of what the stores measured on their own validation shoppers for each model offered to them, "
        "pooled: the number a recipe may be chosen by. *Same-second events shuffled* (`--shuffle-same-time`, "
        "`[training] shuffle_same_time`): every store permutes each run of a shopper's training events that share a "
        "second afresh every epoch, so the split's item-id tie-break is not learnt as an order (test and validation "
        "targets keep the split's order). " + note + "\n")
    out.append("| run | seed | HR@10 full | NDCG@10 full | HR@10 sampled | NDCG@10 sampled | HR@10 full, distinct "
               f"last timestamps | worst store HR@10 | {half} | stores' validation HR@10, {half} | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    keys = ["hr10_full", "ndcg10_full", "hr10_sampled", "ndcg10_sampled", "hr10_full_distinct_timestamps"]
    for label, reports in runs:
        for r in reports:
            f = r["final"]
            w = f.get("worst_store") or {}
            out.append(f"| {label} | {r['config']['seed']} | " + " | ".join(f"{f[k]:.4f}" for k in keys)
                       + f" | {w.get('hr10', float('nan')):.4f} ({w.get('store', '?')}) | {second_half(r):.4f} | "
                       f"{second_half(r, 'federated_validation_hr10'):.4f} | {f['seconds']:.0f} |")
        if len(reports) > 1:
            ws = [(r["final"].get("worst_store") or {}).get("hr10", float("nan")) for r in reports]
            out.append(f"| **{label}, mean ± std** | {', '.join(str(r['config']['seed']) for r in reports)} | "
                       + " | ".join(("**{}**" if k == "hr10_full" else "{}").format(cell([r["final"][k] for r in reports]))
                                    for k in keys)
                       + f" | {cell(ws)} | **{cell([second_half(r) for r in reports])}** | "
                       f"{cell([second_half(r, 'federated_validation_hr10') for r in reports])} | {mean_std([r['final']['seconds'] for r in reports])[0]:.0f} |")
    for label, reports in runs:
        if len(reports) < 2:
            continue
        last = mean_std([r["final"]["hr10_full"] for r in reports])[0]
        level = mean_std([second_half(r) for r in reports])[0]
        parts = []
        if central:
            parts.append(f"last model / centralized HR@10 = {last / central[0]:.3f}, {half} / centralized = "
                         f"{level / central[0]:.3f} (centralized {central[0]:.4f}, the quality table's fused row; "
                         f"0.97 × that = {0.97 * central[0]:.4f})")
        if local_hr:
            parts.append(f"last model / local-only = {last / local_hr:.2f} (local-only {local_hr:.4f})")
        if parts:
            out.append(f"\n{label}, {len(reports)} seeds: " + "; ".join(parts) + ".")
        if central and distinct:
            # The rest of the test shoppers have their last two events at the same second, ordered
            # by item id alone: a model can score there by learning id order instead of taste.
            d_hr, n_distinct, n_all = distinct
            n_tied = n_all - n_distinct
            d_fed = mean_std([r["final"]["hr10_full_distinct_timestamps"] for r in reports])[0]
            tied = lambda full, dist: (full * n_all - dist * n_distinct) / n_tied
            out.append(
                f"On the {n_distinct} test shoppers whose last two events have distinct timestamps: HR@10 {d_fed:.4f} "
                f"against centralized {d_hr:.4f} ({d_fed / d_hr:.3f}); on the other {n_tied}, whose last two events "
                f"share a second and are ordered by item id alone: {tied(last, d_fed):.4f} against "
                f"{tied(central[0], d_hr):.4f} ({tied(last, d_fed) / tied(central[0], d_hr):.3f}).")
        what, paired = paired_with.get(label, ("", []))
        base = {r["config"]["seed"]: r for r in paired}
        pairs = [(r, base[r["config"]["seed"]]) for r in reports if r["config"]["seed"] in base]
        if pairs:
            d_last = [r["final"]["hr10_full"] - b["final"]["hr10_full"] for r, b in pairs]
            d_level = [second_half(r) - second_half(b) for r, b in pairs]
            d_clean = [r["final"]["hr10_full_distinct_timestamps"] - b["final"]["hr10_full_distinct_timestamps"]
                       for r, b in pairs]
            out.append(
                f"\n{label} minus {what} (same seeds), "
                f"seed by seed: last model {', '.join(f'{d:+.4f}' for d in d_last)}; {half} "
                f"{', '.join(f'{d:+.4f}' for d in d_level)} (mean {mean_std(d_level)[0]:+.4f}): ahead in "
                f"{sum(d > 0 for d in d_level)} of {len(d_level)} seeds; last model on the distinct-timestamp slice "
                f"{', '.join(f'{d:+.4f}' for d in d_clean)} (mean {mean_std(d_clean)[0]:+.4f}).")
    # The recipe the stores' own validation would choose, among those with the most seeds.
    label, reports = max(runs, key=lambda lr: (len(lr[1]), mean_std([second_half(r, "federated_validation_hr10")
                                                                     for r in lr[1]])[0]))
    out.append(f"\nHR@10 (full) of the last model per store, {label}, the recipe the stores' validation ranks first (mean over seeds {', '.join(str(r['config']['seed']) for r in reports)}):\n")
    out.append("| store | shoppers | HR@10 full | NDCG@10 full |")
    out.append("|---|---|---|---|")
    r0 = reports[0]
    for st in sorted(r0["final"]["per_store"]):
        hr = [r["final"]["per_store"][st]["hr10"] for r in reports if st in r["final"]["per_store"]]
        nd = [r["final"]["per_store"][st]["ndcg10"] for r in reports if st in r["final"]["per_store"]]
        out.append(f"| {st} | {r0['final']['per_store'][st]['cases']} | {cell(hr)} | {cell(nd)} |")
    return "\n".join(out) + "\n"


# (run, label, the run it pairs with, what that run is)
CONTEXT_RUNS = [("fed_e2ctx25", "2 epochs a round", "fed_e2", "the same recipe on disjoint windows"),
                ("fed_e3ctx25", "3 epochs a round", "fed_e3", "the same recipe on disjoint windows"),
                ("fed_e2ctx25tie", "2 epochs a round, same-second events shuffled", "fed_e2ctx25",
                 "the same recipe in the split's order"),
                ("fed_e3ctx25tie", "3 epochs a round, same-second events shuffled", "fed_e3ctx25",
                 "the same recipe in the split's order")]


def hr_at_round_cell(reports, k):
    """Mean ± std of test HR@10 (full) after round k over `reports`; – when a seed lacks it."""
    vals = [row["hr10_full"] for r in reports for row in r["rounds"] if row["round"] == k]
    return cell(vals) if len(vals) == len(reports) else "–"


def epsilon_max_cell(reports):
    eps = [max((v for v in r["final"]["epsilon"].values() if v is not None), default=None) for r in reports]
    eps = [e for e in eps if e is not None]
    return f"{max(eps):.2f}" if eps else "–"


def worst_store_cell(reports):
    return cell([(r["final"].get("worst_store") or {}).get("hr10", float("nan")) for r in reports])


PRETRAIN_RUNS = [("fed_p10", "random start"), ("fed_p10pt", "pretrained by the platform"),
                 ("fed_dp8_p10", "random start, user-level DP-SGD ε = 8"),
                 ("fed_dp8_p10pt", "pretrained by the platform, user-level DP-SGD ε = 8"),
                 ("fed_dp8_p10_lr1", "random start, user-level DP-SGD ε = 8, stores' lr 1e-3"),
                 ("fed_dp8_p10pt_lr1", "pretrained by the platform, user-level DP-SGD ε = 8, stores' lr 1e-3"),
                 ("fed_dp8_p10pt_q1", "pretrained by the platform, user-level DP-SGD ε = 8, every shopper of a "
                                      "store in every step (q = 1)")]


def pretrain_section(runs, note):
    """Transfer learning: the same federation from a random start and from the model the
    platform pretrained on its own shoppers, with and without DP; `runs` is [(label, reports)]."""
    out = ["## Federation from a model the platform pretrained (MovieLens-100K, 11 ZIP stores)", "",
           "`SEEDS=\"1 2 3\" bench/federation.sh --only fed_p10,fed_p10pt,fed_dp8_p10,fed_dp8_p10pt,fed_dp8_p10pt_lr1` and "
           "`--only fed_dp8_p10_lr1,fed_dp8_p10pt_q1` (seed 1) (quickstart on "
           "loopback, as above): the platform holds 10% of the shoppers out of every store (`--platform-share 0.1`, "
           "the same shoppers for a seed in every row) and fine-tunes the fusion on them after each aggregation; the "
           "stores federate the first recipe (2 local epochs, batches of 8 windows, AdamW lr 0.003 constant) for 10 "
           "rounds (where a row says so, at a store lr of 1e-3, or with DP-SGD steps over all of a store's "
           "shoppers), the last model served, tested on the stores' test shoppers only. *Pretrained* rows start from the "
           "model the platform trained on its own shoppers first (`--pretrain-epochs 50`: batches of 32, lr 1e-3 "
           "after 100 warm-up steps on a cosine, the epoch its own validation shoppers rank best kept, patience 10; "
           "`fedfuse-server pretrain` in production); no store's data is read for it, so it costs no store any "
           "privacy. *Round 0* is the starting model itself. DP rows: user-level DP-SGD in every store, ε = 8 over "
           "the 10 rounds, δ = 1e-4, 16 expected shoppers a step (q ≈ 0.2) unless the row says otherwise, clip 1, "
           "updates averaged uniformly; a DP store reports no validation. " + note, ""]
    out.append("| start | seeds | HR@10 full, round 0 | round 1 | round 3 | round 5 | HR@10 full after round 10 | "
               "NDCG@10 full | HR@10 sampled | NDCG@10 sampled | worst store HR@10 | ε max | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, reports in runs:
        at = lambda k: hr_at_round_cell(reports, k)  # noqa: E731
        out.append(
            f"| {label} | {', '.join(str(r['config']['seed']) for r in reports)} | {at(0)} | {at(1)} | {at(3)} | {at(5)} | "
            f"**{cell([r['last']['hr10_full'] for r in reports])}** | {cell([r['last']['ndcg10_full'] for r in reports])} | "
            f"{cell([r['final']['hr10_sampled'] for r in reports])} | {cell([r['final']['ndcg10_sampled'] for r in reports])} | "
            f"{worst_store_cell(reports)} | {epsilon_max_cell(reports)} | "
            f"{mean_std([r['final']['seconds'] for r in reports])[0]:.0f} |")
    by = dict(runs)
    pre = [r["pretraining"] for r in by.get("pretrained by the platform", []) if r.get("pretraining")]
    if pre:
        validation = [p["platform_validation_hr10"] for p in pre]
        out.append("")
        out.append(f"The platform's pretraining, per seed: {', '.join(str(p['shoppers']) for p in pre)} shoppers; "
                   f"epochs kept {', '.join(str(p['best_epoch']) for p in pre)} of "
                   f"{', '.join(str(p['epochs']) for p in pre)}; platform validation HR@10 "
                   f"{', '.join(f'{v:.4f}' for v in validation)}; "
                   f"{mean_std([p['seconds'] for p in pre])[0]:.0f} s on average (inside the wall time above).")
    for base, treated in (("random start", "pretrained by the platform"),
                          ("random start, user-level DP-SGD ε = 8", "pretrained by the platform, user-level DP-SGD ε = 8"),
                          ("random start, user-level DP-SGD ε = 8, stores' lr 1e-3",
                           "pretrained by the platform, user-level DP-SGD ε = 8, stores' lr 1e-3")):
        a = {r["config"]["seed"]: r for r in by.get(base, [])}
        b = {r["config"]["seed"]: r for r in by.get(treated, [])}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        d = [b[s]["last"]["hr10_full"] - a[s]["last"]["hr10_full"] for s in seeds]
        treated_seeds = sorted(b)
        gain = [b[s]["last"]["hr10_full"] - b[s]["rounds"][0]["hr10_full"] for s in treated_seeds]
        out.append("")
        out.append(f"{treated} minus {base}, HR@10 after round 10, seed by seed: "
                   f"{', '.join(f'{x:+.4f}' for x in d)} (seeds {', '.join(map(str, seeds))}, mean {mean_std(d)[0]:+.4f}); "
                   f"what the stores' 10 rounds add to the pretrained start: {', '.join(f'{x:+.4f}' for x in gain)} "
                   f"(seeds {', '.join(map(str, treated_seeds))}, mean {mean_std(gain)[0]:+.4f}).")
    return "\n".join(out) + "\n"


SUBSET_RUNS = [("fed_dp8_p10pt_fusion", "user-level DP-SGD ε = 8, the fusion trained (α, content scale, MLP head)"),
               ("fed_dp8_p10pt_dense", "user-level DP-SGD ε = 8, the fusion and the sequence encoder trained"),
               ("fed_p10pt_fusion", "no DP, the fusion trained"),
               ("fed_p10pt_dense", "no DP, the fusion and the sequence encoder trained")]


def subset_section(runs, note):
    """Private stores adapting part of the platform's pretrained model (`--train-only`);
    `runs` is [(label, reports)]."""
    out = ["## Private stores adapting part of the pretrained model (MovieLens-100K, 11 ZIP stores)", "",
           "`SEEDS=\"1 2 3\" bench/federation.sh --only fed_dp8_p10pt_fusion,fed_dp8_p10pt_dense` and "
           "`--only fed_p10pt_fusion,fed_p10pt_dense` (seed 1) (quickstart on loopback, as above): the federation of the section above "
           "(the platform holds 10% of the shoppers and pretrains the model on them, `--pretrain-epochs 50`; the stores "
           "federate the first recipe for 10 rounds; user-level DP-SGD ε = 8 over the 10 rounds, δ = 1e-4, 16 expected "
           "shoppers a step, clip 1), with the stores training only the parameters the plan names (`--train-only`, "
           "`[plan] trainable`): each shopper's gradient is clipped over those, only they are noised and stepped, and "
           "the aggregator rejects an update that moves any other. *Round 0* is the pretrained model; *rounds add* is "
           "HR@10 after round 10 minus round 0, seed by seed. " + note, ""]
    out.append("| stores train | parameters trained | seeds | HR@10 full, round 0 | round 1 | round 5 | HR@10 full after round 10 | "
               "rounds add | NDCG@10 full | HR@10 sampled | worst store HR@10 | ε max | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, reports in runs:
        at = lambda k: hr_at_round_cell(reports, k)  # noqa: E731
        gain = [r["last"]["hr10_full"] - at_round(r, 0)["hr10_full"] for r in reports]
        trained = sorted({r["config"].get("trained_parameters") for r in reports} - {None})
        out.append(
            f"| {label} | {', '.join(f'{t:,}' for t in trained)} | {', '.join(str(r['config']['seed']) for r in reports)} | "
            f"{at(0)} | {at(1)} | {at(5)} | **{cell([r['last']['hr10_full'] for r in reports])}** | "
            f"{', '.join(f'{g:+.4f}' for g in gain)} (mean {mean_std(gain)[0]:+.4f}) | "
            f"{cell([r['last']['ndcg10_full'] for r in reports])} | {cell([r['final']['hr10_sampled'] for r in reports])} | "
            f"{worst_store_cell(reports)} | {epsilon_max_cell(reports)} | "
            f"{mean_std([r['final']['seconds'] for r in reports])[0]:.0f} |")
    return "\n".join(out) + "\n"


def at_round(report, k):
    rows = [r for r in report["rounds"] if r["round"] == k]
    return rows[0] if rows else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", type=Path, nargs="+", required=True,
                    help="one folder of reports per seed; the first seed's also gives the detail tables")
    ap.add_argument("--benchmarks", type=Path, required=True)
    ap.add_argument("--note", default="", help="a sentence on how the runs were made (load, machine)")
    ap.add_argument("--sections", default=None,
                    help="comma-separated section tags to write (e.g. federation-pretrained); the others keep "
                         "their text, notes included. Default: every section that has reports")
    args = ap.parse_args()
    global ONLY
    ONLY = set(args.sections.split(",")) if args.sections else None
    md = args.benchmarks.read_text() if args.benchmarks.exists() else "# Benchmarks\n"
    central = centralized(md)
    names = ["local", "fed_f32", "fed_f32_cos", "fed_f16", "fed_int8", "fed_dp8", "fed_central8", "fed_ft"]
    # every seed's report of each run, the first folder's first
    seeds_of = {n: [r for r in (load(d, n) for d in args.reports) if r] for n in names}
    local = seeds_of["local"][0] if seeds_of["local"] else None
    runs = {n: seeds_of[n][0] for n in names[1:] if seeds_of[n]}
    served = [r for r in (load(d, "fed_b32e4") for d in args.reports) if r]
    if served:
        table = served_section(served, central, local_only(md), args.note)
        print(table)
        md = replace_section(md, "federation-served", table)
        args.benchmarks.write_text(md)
    tail = [r for r in (load(d, "fed_tail30") for d in args.reports) if r]
    if tail:
        table = tail_section(tail, central, local_only(md), args.note)
        print(table)
        md = replace_section(md, "federation-tail-average", table)
        args.benchmarks.write_text(md)
    constant = [r for r in (load(d, "fed_rounds40") for d in args.reports) if r]
    held = [r for r in (load(d, "fed_hold40") for d in args.reports) if r]
    if constant or held:
        table = rounds_section(constant, held, central, local_only(md), args.note)
        print(table)
        md = replace_section(md, "federation-rounds", table)
        args.benchmarks.write_text(md)
    screens = [r for r in (load(args.reports[0], n) for n in ("fed_slr15", "fed_slr20", "fed_m05", "fed_prox01", "fed_drift")) if r]
    long = [r for r in (load(d, "fed_slr15x30") for d in args.reports) if r]
    if screens or long:
        table = server_step_section(screens, long, constant, central, local_only(md), args.note)
        print(table)
        md = replace_section(md, "federation-server-step", table)
        args.benchmarks.write_text(md)
    exact = [r for r in (load(d, "fed_exact") for d in args.reports) if r]
    if exact:
        plain = [r for r in (load(d, "fed_f32") for d in args.reports) if r]
        long = [r for r in (load(d, "fed_exact40") for d in args.reports) if r]
        table = exact_section(exact, plain, rounds40_at_20(md), long, central, args.note, rounds40_final(md))
        print(table)
        md = replace_section(md, "federation-exact-softmax", table)
        args.benchmarks.write_text(md)
    labelled = [("3 epochs a round", "fed_e3"), ("3 epochs a round, dropout 0.4", "fed_e3d04"),
                ("4 epochs a round", "fed_e4x30"),
                ("3 epochs a round, server Nesterov momentum (η 0.7, β 0.9)", "fed_e3nest"),
                ("3 epochs a round, fresh AdamW moments every round", "fed_e3forget"),
                ("3 epochs a round, AdamW moments averaged over the stores", "fed_e3pm"),
                ("2 epochs a round (the first recipe)", "fed_e2"),
                ("2 epochs a round, batches of 4 windows", "fed_e2b4"),
                ("2 epochs a round, stores' lr 5e-3", "fed_e2lr5"),
                ("2 epochs a round, context windows (50 read, last 25 scored)", "fed_e2ctx25"),
                ("3 epochs a round, context windows (50 read, last 25 scored)", "fed_e3ctx25"),
                ("pooled: one store of every shopper, 2 epochs a round", "fed_pool_e2")]
    work = [(label, r) for label, r in ((label, load(args.reports[0], n)) for label, n in labelled) if r]
    seeded = [(label, rs) for label, rs in ((label, [r for r in (load(d, n) for d in args.reports) if r])
                                           for label, n in labelled) if len(rs) > 1]
    if work:
        table = local_work_section(work, seeded, central, args.note)
        print(table)
        md = replace_section(md, "federation-local-work", table)
        args.benchmarks.write_text(md)
    ctx = [(label, [r for r in (load(d, n) for d in args.reports) if r]) for n, label, _, _ in CONTEXT_RUNS]
    ctx = [(label, rs) for label, rs in ctx if rs]
    if ctx:
        paired_with = {label: (what, [r for r in (load(d, base) for d in args.reports) if r])
                       for _, label, base, what in CONTEXT_RUNS}
        table = context_section(ctx, paired_with, central, centralized_distinct(md), local_only(md), args.note)
        print(table)
        md = replace_section(md, "federation-context-windows", table)
        args.benchmarks.write_text(md)
    for spec, render, tag in ((PRETRAIN_RUNS, pretrain_section, "federation-pretrained"),
                              (SUBSET_RUNS, subset_section, "federation-dp-subset")):
        # every seed's reports of each run in the family that has any
        family = [(label, [r for r in (load(d, n) for d in args.reports) if r]) for n, label in spec]
        family = [(label, rs) for label, rs in family if rs]
        if family:
            table = render(family, args.note)
            print(table)
            md = replace_section(md, tag, table)
            args.benchmarks.write_text(md)
    if not runs and not local:
        print("no reports of the main federation table under", args.reports)
        return
    def seeds(n):
        return sorted({r["config"]["seed"] if "config" in r and "seed" in r["config"] else r.get("seeds", ["?"])[0]
                       for r in seeds_of[n]})
    out = ["## Federation on MovieLens-100K (11 ZIP stores)\n"]
    out.append(
        "`bench/federation.sh` (quickstart on loopback: real QUIC, mutual TLS, one agent per store; "
        "the main table is the mean ± sample std over the seeds in its column, the detail tables are of the "
        "first seed). Recipe: fused model dim 64, max_len 50, head 16; per round every "
        "store trains 2 local epochs, batches of 8 windows, AdamW lr 3e-3 (constant, or where the row "
        "says cosine, offered by the aggregator on a cosine from 3e-3 in round 1 towards 1.5e-4 after the "
        "last), keeping its optimiser moments; FedAvg weighted by examples (store-level DP: clipped to an "
        "adaptive median norm, summed unweighted, noised once, divided by 11). Test metrics of the global model, full ranking "
        "(decides) and 99 sampled negatives. Centralized = fused row of the quality table "
        "(mean of its seeds); local-only = `train_centralized --mode local-only` (each store alone, "
        "early stopping on its validation shoppers), every shopper scored by their own store's model. "
        + args.note + "\n"
    )
    out.append("| run | seeds | rounds | HR@10 full | NDCG@10 full | HR@10 sampled | NDCG@10 sampled | "
               "worst store HR@10 | / centralized | / local-only | ε max | wall s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    def metric(n, key):
        """Every seed's value of one final metric of run `n`."""
        return [(r if n == "local" else r["final"])[key] for r in seeds_of[n]]

    def worst(n):
        ws = [(r if n == "local" else r["final"]).get("worst_store") or {} for r in seeds_of[n]]
        return cell([w.get("hr10", float("nan")) for w in ws]) + " (" + ", ".join(sorted({w.get("store", "?") for w in ws})) + ")"

    local_hr = mean_std(metric("local", "hr10_full"))[0] if local else None
    if central:
        out.append(f"| centralized fused (quality table) | | – | {central[0]:.4f} | {central[1]:.4f} | | | | 1.00 | "
                   + (f"{central[0] / local_hr:.2f}" if local_hr else "") + " | | |")
    if local:
        hr = mean_std(metric("local", "hr10_full"))[0]
        out.append(
            f"| local-only (each store alone) | {', '.join(map(str, seeds('local')))} | – | "
            + " | ".join(cell(metric("local", k)) for k in ["hr10_full", "ndcg10_full", "hr10_sampled", "ndcg10_sampled"])
            + f" | {worst('local')} | " + (f"{hr / central[0]:.2f}" if central else "")
            + f" | 1.00 | | {mean_std(metric('local', 'seconds'))[0]:.0f} |"
        )
    labels = {
        "fed_f32": "federated, f32 updates",
        "fed_f32_cos": "federated, f32 updates, learning rate cosine over the rounds",
        "fed_central8": "federated, store-level DP-FedAvg ε = 8, δ = 1e-4 (noise once, by the aggregator), learning rate cosine",
        "fed_f16": "federated, f16 updates",
        "fed_int8": "federated, int8 updates",
        "fed_dp8": "federated, user-level DP-SGD ε = 8, δ = 1e-4",
        "fed_ft": "federated + platform fine-tuning (10% shoppers held out)",
    }
    for name, r in runs.items():
        hr = mean_std(metric(name, "hr10_full"))[0]
        eps = [e for rr in seeds_of[name] for e in rr["final"].get("epsilon", {}).values() if e is not None]
        eps += [rr["final"]["store_level_epsilon"] for rr in seeds_of[name]
                if rr["final"].get("store_level_epsilon") is not None]
        out.append(
            f"| {labels[name]} | {', '.join(map(str, seeds(name)))} | {r['config']['rounds']} | "
            + " | ".join(cell(metric(name, k)) for k in ["hr10_full", "ndcg10_full", "hr10_sampled", "ndcg10_sampled"])
            + f" | {worst(name)} | "
            + (f"{hr / central[0]:.2f}" if central else "") + " | "
            + (f"{hr / local_hr:.2f}" if local_hr else "") + " | "
            + (f"{max(eps):.2f}" if eps else "–") + f" | {mean_std(metric(name, 'seconds'))[0]:.0f} |"
        )

    if "fed_f32" in runs:
        r = runs["fed_f32"]
        out.append("\nHR@10 (full) of the f32 federation by round:\n")
        ks = [k for k in [1, 2, 5, 10, 15, 20, 25, 30] if at_round(r, k)]
        out.append("| round | " + " | ".join(str(k) for k in ks) + " |")
        out.append("|---" * (len(ks) + 1) + "|")
        out.append("| HR@10 | " + " | ".join(f"{at_round(r, k)['hr10_full']:.4f}" for k in ks) + " |")
        out.append("| mean local train loss | " + " | ".join(
            f"{at_round(r, k)['train_loss']:.3f}" if at_round(r, k)["train_loss"] is not None else "–" for k in ks) + " |")

    enc = [n for n in ["fed_f32", "fed_f16", "fed_int8"] if n in runs]
    if enc:
        k = min(runs[n]["config"]["rounds"] for n in enc)
        out.append(f"\nBytes on the wire per store and round (QUIC stream payload, both directions) and the "
                   f"HR@10 (full) each encoding reaches after {k} rounds:\n")
        out.append("| encoding | up per store-round | down per store-round | HR@10 full at round "
                   f"{k} | NDCG@10 full at round {k} |")
        out.append("|---|---|---|---|---|")
        for n in enc:
            r = runs[n]
            f = r["final"]
            stores = len(f["per_store"]) or 11
            per = stores * r["config"]["rounds"]
            row = at_round(r, k)
            out.append(f"| {r['config']['encoding']} | {f['bytes_up'] / per / 1e6:.3f} MB | "
                       f"{f['bytes_down'] / per / 1e6:.3f} MB | {row['hr10_full']:.4f} | {row['ndcg10_full']:.4f} |")

    if "fed_f32" in runs or local:
        stores = sorted(set((runs.get("fed_f32") or {}).get("final", {}).get("per_store", {}))
                        | set((local or {}).get("per_store", {})))
        cols = [("fed_f32", "federated f32"), ("fed_dp8", "federated DP ε=8")]
        cols = [(n, l) for n, l in cols if n in runs]
        out.append("\nHR@10 (full) per store, test shoppers of that store:\n")
        out.append("| store | shoppers | " + " | ".join(l for _, l in cols) + (" | local-only |" if local else " |"))
        out.append("|---|---|" + "---|" * (len(cols) + (1 if local else 0)))
        for s in stores:
            first = runs.get("fed_f32", {}).get("final", {}).get("per_store", {}).get(s)
            cases = first["cases"] if first else (local["per_store"][s].get("cases", "") if local else "")
            cells = []
            for n, _ in cols:
                m = runs[n]["final"]["per_store"].get(s)
                cells.append(f"{m['hr10']:.4f}" if m else "")
            if local:
                m = local["per_store"].get(s)
                cells.append(f"{m['hr10']:.4f}" if m else "")
            out.append(f"| {s} | {cases} | " + " | ".join(cells) + " |")

    if "fed_ft" in runs and runs["fed_ft"]["fine_tuning"]:
        out.append("\nServer fine-tuning of the fusion weights and head on the platform's held-out shoppers "
                   "(validation HR@10 of the platform's shoppers before → after, per round; a round whose "
                   "fine-tuning does not improve is discarded):\n")
        out.append("| round | HR@10 before | HR@10 after | NDCG@10 before | NDCG@10 after | kept |")
        out.append("|---|---|---|---|---|---|")
        for ft in runs["fed_ft"]["fine_tuning"]:
            m = ft["metrics"]
            out.append(f"| {ft['round']} | {m.get('fine_tune_validation_hr10_before', float('nan')):.4f} | "
                       f"{m.get('fine_tune_validation_hr10_after', float('nan')):.4f} | "
                       f"{m.get('fine_tune_validation_ndcg10_before', float('nan')):.4f} | "
                       f"{m.get('fine_tune_validation_ndcg10_after', float('nan')):.4f} | "
                       f"{'yes' if m.get('fine_tune_kept', 0) > 0.5 else 'no'} |")

    table = "\n".join(out) + "\n"
    print(table)
    md = replace_section(md, "federation-ml100k", table)
    args.benchmarks.write_text(md)
    print("wrote", args.benchmarks)


if __name__ == "__main__":
    main()
