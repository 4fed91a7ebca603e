"""PyTorch reference of the fused recommender (fedfuse-model), for CPU speed comparisons.

Mirrors model/src/{fused,item_tower,sequence,attention,dense,window,train,catalog}.rs:
the same architecture, shapes, initialisation, windows, candidate sampling, log-q correction
and sampled-softmax loss, on MovieLens-100K. Measures on CPU (2 threads by default):

- train_examples_per_sec: next-item predictions trained per second (batch building included,
  as in the Rust epoch timer), over --steps steps after 5 warm-up steps;
- recommendations_per_sec: shoppers scored against the whole catalog, seen items masked,
  top-10, in eval mode without autograd, batches of 256 histories of the last 50 items (the
  catalog's item vectors are computed once beforehand, as `Recommender::new` does);
- with --dp: one Opacus DP-SGD step (one window per shopper, uniform candidates only, noise
  multiplier 1.0, max_grad_norm 1.0) against the same step without privacy.

--check-learning trains ~2 epochs and prints the mean loss per epoch (no timing).

Prints one JSON object on stdout (and writes it to --out if given). Progress goes to stderr.
"""
import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD = 0
TITLE_LEN = 8
YEAR = re.compile(r"\((\d{4})\)")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Data (data/src/movielens.rs, data/src/catalog.rs, data/src/split.rs)


def tokenize(text):
    """Lowercased alphanumeric words (catalog.rs `tokenize`)."""
    return [w.lower() for w in re.split(r"[^\w]|_", text) if w]


def strip_years(title):
    """The title without `(yyyy)` groups (movielens.rs `strip_years`)."""
    return YEAR.sub("", title)


def load_movielens(folder):
    folder = Path(folder)
    item_index = {}  # external id -> dense data id (file order of u.item)
    titles, genres = [], []
    vocab = {"<unknown>": 0}
    for line in (folder / "u.item").read_bytes().decode("latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 24:
            raise SystemExit(f"u.item: expected 24 fields, got {len(f)}")
        item_index[f[0]] = len(item_index)
        if f[1] == "unknown":  # item 267: a missing title
            tokens = [0]
        else:
            tokens = [vocab.setdefault(t, len(vocab)) for t in tokenize(strip_years(f[1]))] or [0]
        titles.append(tokens)
        # Genre flag i is genre index i (flag 0, "unknown", is the vocabulary's unknown 0).
        genres.append([g for g, flag in enumerate(f[5:]) if flag == "1"])
    users = []
    user_file = folder / "u.user"
    if user_file.exists():
        users = [l.split("|")[0] for l in user_file.read_bytes().decode("latin-1").splitlines() if l.strip()]
    user_index = {u: i for i, u in enumerate(users)}
    events = {}
    for line in (folder / "u.data").read_bytes().decode("latin-1").splitlines():
        if not line.strip():
            continue
        u, i, _rating, ts = line.split("\t")
        s = user_index.setdefault(u, len(user_index))
        events.setdefault(s, set()).add((int(ts), item_index[i]))  # set: collapse_duplicates
    sequences = []
    for s in range(len(user_index)):
        ev = sorted(events.get(s, ()))  # (timestamp, item id)
        items = [i for _, i in ev]
        # Leave-last-two-out: test and validation targets are held out (split.rs); shoppers
        # with fewer than 3 events keep everything in training.
        sequences.append(items[:-2] if len(items) >= 3 else items)
    return sequences, titles, genres, len(vocab)


class Catalog:
    """Content features indexed by model id (row 0 = padding), catalog.rs `to_tensors`."""

    def __init__(self, titles, genres, n_tokens):
        n = len(titles) + 1
        self.n_items = n - 1
        self.vocab = {
            "items": n,
            # ML-100K has no category, brand or price: every film maps to index 0 (unknown),
            # and the vocabulary size is max + 1 = 1, as `ItemFeatures::vocabulary` makes it.
            "categories": 1,
            "brands": 1,
            "price_bands": 1,
            "tokens": n_tokens,
            "genres": max((g for gs in genres for g in gs), default=0) + 1,
        }
        self.category = torch.zeros(n, dtype=torch.long)
        self.brand = torch.zeros(n, dtype=torch.long)
        self.price_band = torch.zeros(n, dtype=torch.long)

        def bag(rows):
            ids = torch.zeros(n, TITLE_LEN, dtype=torch.long)
            mask = torch.zeros(n, TITLE_LEN)
            for i, toks in enumerate(rows):
                toks = toks[:TITLE_LEN]
                ids[i + 1, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                mask[i + 1, : len(toks)] = 1.0
            return ids, mask

        self.title, self.title_mask = bag(titles)
        self.genre, self.genre_mask = bag(genres)


# ----------------------------------------------------------------------------------------
# Model


def uniform_(t, fan_in):
    """burn's Linear default as dense.rs uses it: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        t.uniform_(-bound, bound)
    return t


def dense(i, o, bias=True):
    lin = nn.Linear(i, o, bias=bias)
    uniform_(lin.weight, i)
    if bias:
        uniform_(lin.bias, i)
    return lin


def table(n, d, std=0.05, value=None):
    emb = nn.Embedding(max(n, 1), d)
    with torch.no_grad():
        if value is None:
            emb.weight.normal_(0.0, std)
        else:
            emb.weight.fill_(value)
    return emb


class ItemTower(nn.Module):
    def __init__(self, vocab, d):
        super().__init__()
        self.id = table(vocab["items"], d)
        self.category = table(vocab["categories"], d)
        self.brand = table(vocab["brands"], d)
        self.price_band = table(vocab["price_bands"], d)
        self.token = table(vocab["tokens"], d)
        self.genre = table(vocab["genres"], d)

    @staticmethod
    def bag_mean(rows, mask):
        mask = mask.unsqueeze(-1)
        return (rows * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)

    def forward(self, ids, cat):
        """ids `[E, N]` model ids -> (id `[E, N, d]`, content `[E, N, d]`). One lookup per
        table, so that under Opacus every table's hook sees exactly one call."""
        content = (
            self.category(cat.category[ids])
            + self.brand(cat.brand[ids])
            + self.price_band(cat.price_band[ids])
            + self.bag_mean(self.token(cat.title[ids]), cat.title_mask[ids])
            + self.bag_mean(self.genre(cat.genre[ids]), cat.genre_mask[ids])
        )
        return self.id(ids), content


class AttentionBlock(nn.Module):
    """Pre-norm causal self-attention block (attention.rs), written from nn.Linear."""

    def __init__(self, d, heads, dropout):
        super().__init__()
        self.norm_attention = nn.LayerNorm(d, eps=1e-5)
        self.qkv = dense(d, 3 * d)
        self.out = dense(d, d)
        self.norm_feed_forward = nn.LayerNorm(d, eps=1e-5)
        self.feed_forward_in = dense(d, 2 * d)
        self.feed_forward_out = dense(2 * d, d)
        self.dropout = nn.Dropout(dropout)
        self.heads = heads

    def forward(self, x, mask):
        b, t, d = x.shape
        h, dh = self.heads, d // self.heads
        q, k, v = self.qkv(self.norm_attention(x)).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(dh) + mask, dim=3)
        context = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.dropout(self.out(context))
        hidden = F.gelu(self.feed_forward_in(self.norm_feed_forward(x)))
        return x + self.dropout(self.feed_forward_out(hidden))


class SequenceEncoder(nn.Module):
    def __init__(self, d, max_len, layers, heads, dropout):
        super().__init__()
        # A [max_len, d] table (sequence.rs `position`, N(0, 0.05)); an nn.Embedding so that
        # Opacus computes its per-sample gradient natively.
        self.position = table(max_len, d)
        self.blocks = nn.ModuleList([AttentionBlock(d, heads, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(d, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, items, history):
        b, t, _ = items.shape
        pad = history == PAD
        keep = (~pad).float().unsqueeze(-1)
        pads = pad.sum(1, keepdim=True)
        positions = (torch.arange(t).unsqueeze(0) - pads).clamp_min(0)  # from the oldest item
        x = self.dropout((items + self.position(positions)) * keep)
        causal = torch.triu(torch.ones(t, t), 1) * -1e9
        mask = causal.view(1, 1, t, t) + (pad.float() * -1e9).view(b, 1, 1, t)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class MlpHead(nn.Module):
    """The MLP head over [interest, item, interest ⊙ item] (fused.rs `head_*`), with its
    parameters held directly so that Opacus computes its per-sample gradients with functorch.

    All (position, candidate) pairs use fused.rs `mlp_all`: hidden unit h is
    [(s ⊙ W_p[:, h]) + W_i[:, h], A(s)_h] · [i, 1], so the [B·T·H, d+1] rows times the
    [d+1, C] columns are the largest products built (never [B, T, C, d]); the hidden
    activations, [B·T·H·C], are the same size as the Rust model's.

    forward(x, cand=None): with `cand` `[E, C, d]`, x is [interest; target item] `[B, 2T, d]`;
    without, x is [interest; target item; candidate items] `[B, 2T + C, d]` (the single
    per-shopper input Opacus's functorch path needs). Returns `[B, T, 1 + C]`: the target's
    score, then every candidate's.
    """

    def __init__(self, d, h, max_len):
        super().__init__()
        self.max_len = max_len
        self.w_shopper = nn.Parameter(uniform_(torch.empty(d, h), d))
        self.b_shopper = nn.Parameter(uniform_(torch.empty(h), d))
        self.w_item = nn.Parameter(uniform_(torch.empty(d, h), d))
        self.w_product = nn.Parameter(uniform_(torch.empty(d, h), d))
        self.w_out = nn.Parameter(uniform_(torch.empty(h), h))
        self.b_out = nn.Parameter(uniform_(torch.empty(1), h))

    def shopper(self, s):
        return s @ self.w_shopper + self.b_shopper

    def score_all(self, s, a, cand):
        """s `[B, T, d]`, a = shopper(s) `[B, T, H]`, cand `[E, C, d]` (E = 1 or B)."""
        b, t, d = s.shape
        e, c, _ = cand.shape
        h = a.shape[-1]
        rows = s.unsqueeze(2) * self.w_product.t() + self.w_item.t()  # [B, T, H, d]
        rows = torch.cat([rows, a.unsqueeze(-1)], -1)  # [B, T, H, d + 1]
        columns = F.pad(cand, (0, 1), value=1.0)  # [E, C, d + 1]
        # The same products as fused.rs, laid out candidate-major ([C, B·T·H] rather than
        # [B·T·H, C]) so that the H-contraction with head_out is a plain matrix-vector product
        # whose forward and backward need no copy of the [B·T·H·C] hidden activations.
        if e == 1:
            pre = columns[0] @ rows.reshape(b * t * h, d + 1).t()  # [C, B·T·H]
            out = torch.relu(pre).view(c, b * t, h) @ self.w_out  # [C, B·T]
            out = out.t().reshape(b, t, c)
        else:
            pre = columns @ rows.reshape(b, t * h, d + 1).transpose(1, 2)  # [B, C, T·H]
            out = (torch.relu(pre).view(b, c, t, h) @ self.w_out).transpose(1, 2)  # [B, T, C]
        return out + self.b_out

    def forward(self, x, cand=None):
        t = self.max_len
        s, target = x[:, :t], x[:, t : 2 * t]
        if cand is None:
            cand = x[:, 2 * t :]
        a = self.shopper(s)
        pair = torch.relu(a + target @ self.w_item + (s * target) @ self.w_product) @ self.w_out.unsqueeze(1)
        return torch.cat([pair + self.b_out, self.score_all(s, a, cand)], 2)


def l2_normalise(x):
    return x / (x.pow(2).sum(-1, keepdim=True) + 1e-12).sqrt()


def dot_all(a, b):
    """[B, T, d] x [E, C, d] -> [B, T, C], E = 1 or B."""
    bs, t, d = a.shape
    e, c, _ = b.shape
    if e == 1:
        return (a.reshape(1, bs * t, d) @ b.transpose(1, 2)).reshape(bs, t, c)
    return a @ b.transpose(1, 2)


class FusedRecommender(nn.Module):
    def __init__(self, vocab, d=64, max_len=50, head=16, layers=2, heads=2, dropout=0.2):
        super().__init__()
        self.max_len = max_len
        self.items = ItemTower(vocab, d)
        self.sequence = SequenceEncoder(d, max_len, layers, heads, dropout)
        self.head = MlpHead(d, head, max_len)
        # alpha [1, 4] (zeros) and log content scale [1, 1] (ln 5), as one-row tables looked
        # up per example: the same parameters, with native per-sample gradients in Opacus.
        self.alpha = table(1, 4, value=0.0)
        self.content_scale = table(1, 1, value=math.log(5.0))

    def states(self, history, hid, hcontent):
        keep = (history != PAD).float().unsqueeze(-1)
        count = keep.cumsum(1).clamp_min(1.0)
        id_profile = (hid * keep).cumsum(1) / count
        content_profile = (hcontent * keep).cumsum(1) / count
        interest = self.sequence(hid + hcontent, history)
        return id_profile, content_profile, interest

    def fuse(self, e, cf, content, seq, mlp):
        zero = torch.zeros(e, dtype=torch.long)
        w = torch.softmax(self.alpha(zero), -1).view(e, 1, 1, 4)
        scale = self.content_scale(zero).exp().view(e, 1, 1)
        return w[..., 0] * cf + w[..., 1] * content * scale + w[..., 2] * seq + w[..., 3] * mlp

    def logits(self, history, target, cands, cat):
        """Fused scores `[B, T, 1 + C]`: the target's, then each candidate's. `cands` is
        `[1, C]` (shared by the batch) or `[B, C]` (per shopper, for DP-SGD)."""
        b, t = history.shape
        e, c = cands.shape
        if e == 1:
            ids = torch.cat([history.reshape(1, -1), target.reshape(1, -1), cands], 1)
            vid, vcontent = self.items(ids, cat)
            split = lambda v: (v[0, : b * t].view(b, t, -1), v[0, b * t : 2 * b * t].view(b, t, -1), v[:, 2 * b * t :])
        else:
            ids = torch.cat([history, target, cands], 1)
            vid, vcontent = self.items(ids, cat)
            split = lambda v: (v[:, :t], v[:, t : 2 * t], v[:, 2 * t :])
        hid, tid, cid = split(vid)
        hcontent, tcontent, ccontent = split(vcontent)
        id_profile, content_profile, interest = self.states(history, hid, hcontent)
        titem, citem = tid + tcontent, cid + ccontent
        cp = l2_normalise(content_profile)
        pos_cf = (id_profile * tid).sum(-1, keepdim=True)
        pos_content = (cp * l2_normalise(tcontent)).sum(-1, keepdim=True)
        pos_seq = (interest * titem).sum(-1, keepdim=True)
        cf = torch.cat([pos_cf, dot_all(id_profile, cid)], 2)
        content = torch.cat([pos_content, dot_all(cp, l2_normalise(ccontent))], 2)
        seq = torch.cat([pos_seq, dot_all(interest, citem)], 2)
        if e == 1:
            mlp = self.head(torch.cat([interest, titem], 1), citem)
        else:
            mlp = self.head(torch.cat([interest, titem, citem], 1))
        return self.fuse(e, cf, content, seq, mlp)

    @torch.no_grad()
    def catalog_vectors(self, cat):
        vid, vcontent = self.items(torch.arange(1, cat.n_items + 1).view(1, -1), cat)
        return vid, vcontent

    @torch.no_grad()
    def score_catalog(self, history, cid, ccontent, cat):
        """Last-position scores of histories `[B, T]` against the catalog: `[B, n]`."""
        hid, hcontent = self.items(history, cat)
        id_profile, content_profile, interest = (x[:, -1:] for x in self.states(history, hid, hcontent))
        citem = cid + ccontent
        cf = dot_all(id_profile, cid)
        content = dot_all(l2_normalise(content_profile), l2_normalise(ccontent))
        seq = dot_all(interest, citem)
        mlp = self.head.score_all(interest, self.head.shopper(interest), citem)
        return self.fuse(1, cf, content, seq, mlp)[:, 0]


# ----------------------------------------------------------------------------------------
# Windows, batches, loss (window.rs, train.rs)


def windows(sequences, max_len):
    out = []
    for s, seq in enumerate(sequences):
        end = len(seq)
        while end > 1:
            start = max(end - max_len, 1)
            out.append((s, start, end))
            end = start
    return out


def make_batch(sequences, wins, n_items, in_batch, uniform, max_len, rng):
    b, t = len(wins), max_len
    history = np.zeros((b, t), dtype=np.int64)
    target = np.zeros((b, t), dtype=np.int64)
    for row, (s, start, end) in enumerate(wins):
        seq = sequences[s]
        n = end - start
        history[row, t - n :] = np.asarray(seq[start - 1 : end - 1]) + 1
        target[row, t - n :] = np.asarray(seq[start:end]) + 1
    weight = (target != PAD).astype(np.float32)
    targets = target[target != PAD] - 1  # data ids
    p = len(targets)
    exact = in_batch + uniform >= n_items
    if exact:
        cands = np.arange(n_items)
        lq_c = np.zeros(n_items, dtype=np.float32)
        lq_t = np.zeros((b, t), dtype=np.float32)
    else:
        count = np.bincount(targets, minlength=n_items)
        expected = np.log(in_batch * count / p + uniform / n_items).astype(np.float32)
        cands = np.concatenate([targets[rng.integers(0, p, in_batch)], rng.integers(0, n_items, uniform)])
        lq_c = expected[cands]
        lq_t = np.where(target != PAD, expected[np.maximum(target - 1, 0)], 0.0).astype(np.float32)
    cands = torch.from_numpy(cands + 1).view(1, -1)
    target_t = torch.from_numpy(target)
    return {
        "history": torch.from_numpy(history),
        "target": target_t,
        "weight": torch.from_numpy(weight).unsqueeze(-1),
        "candidates": cands,
        "log_q_target": torch.from_numpy(lq_t).unsqueeze(-1),  # [B, T, 1]
        "log_q_candidates": torch.from_numpy(lq_c).view(1, 1, -1),  # [1, 1, C]
        "collides": target_t.unsqueeze(-1) == cands.view(1, 1, -1),
        "predictions": p,
    }


def position_losses(model, batch, cat, per_shopper_candidates=False):
    cands = batch["candidates"]
    if per_shopper_candidates:
        cands = cands.expand(batch["history"].shape[0], -1)
    logits = model.logits(batch["history"], batch["target"], cands, cat)
    positive = logits[..., :1] - batch["log_q_target"]
    negative = (logits[..., 1:] - batch["log_q_candidates"]).masked_fill(batch["collides"], -1e9)
    logits = torch.cat([positive, negative], 2)
    return -torch.log_softmax(logits, 2)[..., :1]  # [B, T, 1]


def loss(model, batch, cat):
    """Mean over the batch's predictions (train.rs `loss`)."""
    return (position_losses(model, batch, cat) * batch["weight"]).sum() / max(batch["predictions"], 1)


def per_shopper_mean_loss(model, batch, cat, per_shopper_candidates):
    """Mean over shoppers of each shopper's mean loss over its window (dpsgd.rs)."""
    w = batch["weight"]
    per = (position_losses(model, batch, cat, per_shopper_candidates) * w).sum(1) / w.sum(1).clamp_min(1.0)
    return per.mean()


# ----------------------------------------------------------------------------------------
# Benchmarks


def optimizer(model):
    """burn's AdamWConfig defaults (betas 0.9/0.999, eps 1e-5) with train.rs's lr and decay.
    Constant lr: train.rs's cosine decay to 1e-5 does not change a step's cost."""
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-5, weight_decay=1e-4)


def bench_train(model, cat, sequences, args, rng):
    wins = windows(sequences, args.max_len)
    opt = optimizer(model)
    model.train()
    order = rng.permutation(len(wins))
    pos = 0
    total_steps = 5 + args.steps
    examples, start = 0, None
    for step in range(total_steps):
        if step == 5:
            start = time.perf_counter()
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(wins)), 0
        chunk = [wins[i] for i in order[pos : pos + args.batch_size]]
        pos += args.batch_size
        b = make_batch(sequences, chunk, cat.n_items, args.in_batch, args.uniform, args.max_len, rng)
        l = loss(model, b, cat)
        opt.zero_grad(set_to_none=True)
        l.backward()
        opt.step()
        if step >= 5:
            examples += b["predictions"]
    elapsed = time.perf_counter() - start
    log(f"train: {examples} predictions in {elapsed:.2f}s over {args.steps} steps, last loss {l.item():.4f}")
    return examples / elapsed


def bench_recommend(model, cat, sequences, args):
    model.eval()
    cid, ccontent = model.catalog_vectors(cat)  # once, as Recommender::new caches them
    hist = np.zeros((len(sequences), args.max_len), dtype=np.int64)
    for s, seq in enumerate(sequences):
        last = seq[-args.max_len :]
        if last:
            hist[s, args.max_len - len(last) :] = np.asarray(last) + 1
    hist = torch.from_numpy(hist)
    batches = [hist[i : i + 256] for i in range(0, len(hist), 256)]
    with torch.no_grad():
        model.score_catalog(batches[0], cid, ccontent, cat)  # warm-up
        scored, start = 0, time.perf_counter()
        for _ in range(args.rec_rounds):
            for h in batches:
                scores = model.score_catalog(h, cid, ccontent, cat)
                # Never recommend an item in the history (recommend.rs); pads map to a dummy
                # column that is dropped.
                scores = F.pad(scores, (1, 0)).scatter_(1, h, float("-inf"))[:, 1:]
                top = scores.topk(10, dim=1).indices
                scored += h.shape[0]
        elapsed = time.perf_counter() - start
    log(f"recommend: {scored} shoppers in {elapsed:.2f}s (top-10 of {cat.n_items}), e.g. {top[0].tolist()}")
    return scored / elapsed


def bench_dp(plain, cat, sequences, args, rng):
    import warnings

    import opacus
    from opacus import GradSampleModule

    # The embedding layers' inputs are indices, which never require grad; Opacus's full
    # backward hooks then fire on the outputs' gradients, which is what it uses anyway.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    from opacus.optimizers import DPOptimizer

    dp_model = FusedRecommender(cat.vocab, args.dim, args.max_len, args.head)
    dp_model.load_state_dict(plain.state_dict())
    plain_opt = optimizer(plain)
    gsm = GradSampleModule(dp_model, batch_first=True, loss_reduction="mean")
    dp_opt = DPOptimizer(optimizer(gsm), noise_multiplier=1.0, max_grad_norm=1.0,
                         expected_batch_size=args.batch_size, loss_reduction="mean")
    by_shopper = {}
    for w in windows(sequences, args.max_len):
        by_shopper.setdefault(w[0], []).append(w)
    shoppers = sorted(by_shopper)

    def dp_batch():
        chosen = rng.choice(len(shoppers), size=args.batch_size, replace=False)
        wins = [by_shopper[shoppers[i]][rng.integers(len(by_shopper[shoppers[i]]))] for i in chosen]
        return make_batch(sequences, wins, cat.n_items, 0, args.uniform, args.max_len, rng)

    def plain_step(b):
        plain.train()
        l = per_shopper_mean_loss(plain, b, cat, per_shopper_candidates=False)
        plain_opt.zero_grad(set_to_none=True)
        l.backward()
        plain_opt.step()

    def dp_step(b):
        gsm.train()  # the hooks sit on dp_model's layers
        l = per_shopper_mean_loss(dp_model, b, cat, per_shopper_candidates=True)
        dp_opt.zero_grad(set_to_none=True)
        l.backward()
        dp_opt.step()

    times = {}
    for name, step in [("plain", plain_step), ("dp", dp_step)]:
        batches = [dp_batch() for _ in range(2 + args.dp_steps)]
        for b in batches[:2]:
            step(b)  # warm-up
        start = time.perf_counter()
        for b in batches[2:]:
            step(b)
        times[name] = (time.perf_counter() - start) / args.dp_steps
        log(f"{name} step: {times[name] * 1e3:.1f} ms (mean of {args.dp_steps})")
    return opacus.__version__, times["dp"], times["plain"]


def check_learning(model, cat, sequences, args, rng):
    wins = windows(sequences, args.max_len)
    opt = optimizer(model)
    model.train()
    means = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(wins))
        total, examples, start = 0.0, 0, time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            b = make_batch(sequences, [wins[j] for j in order[i : i + args.batch_size]], cat.n_items,
                           args.in_batch, args.uniform, args.max_len, rng)
            l = loss(model, b, cat)
            opt.zero_grad(set_to_none=True)
            l.backward()
            opt.step()
            total += l.item() * b["predictions"]
            examples += b["predictions"]
        means.append(total / examples)
        log(f"epoch {epoch + 1}: mean loss {means[-1]:.4f} over {examples} predictions ({time.perf_counter() - start:.1f}s)")
    return means


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MovieLens-100K folder (u.data, u.item, u.user)")
    p.add_argument("--steps", type=int, default=60, help="timed training steps (after 5 warm-up)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per batch")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--head", type=int, default=16, help="hidden width of the MLP head")
    p.add_argument("--in-batch", type=int, default=256)
    p.add_argument("--uniform", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rec-rounds", type=int, default=2, help="passes over all shoppers when timing recommendations")
    p.add_argument("--dp", action="store_true", help="also time an Opacus DP-SGD step")
    p.add_argument("--dp-steps", type=int, default=5, help="timed steps per DP/plain measurement (after 2 warm-up)")
    p.add_argument("--check-learning", action="store_true", help="train --epochs epochs, print mean loss per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    sequences, titles, genres, n_tokens = load_movielens(args.data)
    cat = Catalog(titles, genres, n_tokens)
    model = FusedRecommender(cat.vocab, args.dim, args.max_len, args.head)
    params = sum(p.numel() for p in model.parameters())
    log(f"{len(sequences)} shoppers, {sum(map(len, sequences))} training events, {cat.n_items} items, "
        f"vocabulary {cat.vocab}, {params} parameters")

    result = {"torch": torch.__version__, "opacus": None, "threads": torch.get_num_threads()}
    if args.check_learning:
        means = check_learning(model, cat, sequences, args, rng)
        result.update({"epoch_mean_loss": means, "loss_decreased": all(b < a for a, b in zip(means, means[1:])), "params": params})
    else:
        result["train_examples_per_sec"] = bench_train(model, cat, sequences, args, rng)
        result["recommendations_per_sec"] = bench_recommend(model, cat, sequences, args)
        result["params"] = params
        if args.dp:
            version, dp, plain = bench_dp(model, cat, sequences, args, rng)
            result.update({"opacus": version, "dp_step_seconds": dp, "plain_step_seconds": plain, "dp_ratio": dp / plain})
    text = json.dumps(result)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
