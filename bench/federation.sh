#!/usr/bin/env bash
# Federated quality, wire bytes and wall time on MovieLens-100K (11 ZIP stores), written into
# BENCHMARKS.md (section `federation-ml100k`) by bench/federation.py.
#
#   bench/federation.sh                      # every run below, seed 1, then the table
#   SEEDS="2 3" bench/federation.sh --only fed_f32,local   # more seeds of some runs
#   bench/federation.sh --render             # the table from the reports already there
#
# Runs, each a JSON report under ${OUT:-$HOME/.cache/fedfuse/federation}/seed-S:
#   fed_f32    quickstart, FedAvg, ${ROUNDS:-20} rounds, f32 updates, constant learning rate
#   fed_b32e4  the same with 4 local epochs of batch 32 per round, serving the version the
#              stores' pooled validation ranked best (also reports the last round's model)
#   fed_tail30 the first recipe for 30 rounds, serving the average of the last K models, K
#              chosen on the stores' validation shoppers (`--serve tail-average:auto`)
#   fed_rounds40  the first recipe for 40 rounds, constant learning rate
#   fed_hold40 the same, the rate held for 60% of the rounds, then decayed on a cosine
#   fed_slr15, fed_slr20, fed_m05  server-step screen, 20 rounds: FedAvg with server lr 1.5 or 2
#              (the aggregate extrapolated), FedAvg with server momentum β = 0.5 (FedAvgM)
#   fed_prox01  the same screen's recipe with FedProx μ = 0.01 in every store's local loss
#   fed_drift  the same screen's recipe with every store correcting its drift (SCAFFOLD-style)
#   fed_exact  the first recipe for 20 rounds with every store's exact softmax over all items
#              (--in-batch 0 --uniform 1682) instead of the sampled one; compared with fed_f32
#   fed_exact40  the same for 40 rounds (SEEDS="1 2 3")
#   fed_e1x40  local work per round: 1 local epoch for 40 rounds (as many examples as fed_f32)
#   fed_e3     3 local epochs for 20 rounds
#   fed_e4x30  4 local epochs for 30 rounds
#   fed_e3d04  3 local epochs for 20 rounds, dropout 0.4 (the model's default is 0.2)
#   fed_e3nest  fed_e3 with DiLoCo's outer step: server Nesterov momentum, lr 0.7, β 0.9
#   fed_e3forget  fed_e3 with every store starting each round from fresh AdamW moments
#              (--forget-optimizer) instead of keeping its own across rounds
#   fed_e3pm   fed_e3 with every store starting each round from the AdamW moments averaged over
#              the stores' last round (--pool-moments; pooled in the quickstart's process)
#   fed_e2     the first recipe (2 local epochs, batches of 8, lr 3e-3) for 20 rounds, the
#              baseline of the next two in the same build
#   fed_e2b4   the same with batches of 4 windows (twice the steps a round)
#   fed_e2lr5  2 local epochs for 20 rounds at the stores' lr 5e-3 (the first recipe's is 3e-3)
#   fed_e2ctx25 the first recipe (fed_e2) on context windows: every training window reads 50 items
#              and scores its last 25 (--window-stride 25)
#   fed_e3ctx25 the same with 3 local epochs a round
#   fed_e2ctx25tie fed_e2ctx25 with each run of same-second training events permuted afresh
#              every epoch (--shuffle-same-time), so the item-id tie-break is not learnt
#   fed_e3ctx25tie fed_e3ctx25 the same way
#   fed_e4ctx25tie 4 local epochs a round on context windows, same-second events shuffled
#   fed_e3ctx25tie30 fed_e3ctx25tie for 30 rounds (constant rate: its first 20 rounds are fed_e3ctx25tie's)
#   fed_e3ctx25tiex fed_e3ctx25tie with every store's exact softmax over all items (--in-batch 0
#              --uniform 1682), the loss the centralized reference trains with: like for like
#   fed_pool_e2  every shopper in one store (--pool-stores), 2 epochs a round for 15 rounds: the
#              federation's recipe with nothing to average (centralized at that recipe)
#   fed_slr15x30  the first recipe for 30 rounds with server lr 1.5 (SEEDS="1 2 3")
#   fed_f32_cos  the same with the aggregator's cosine learning-rate schedule over the rounds
#   fed_f16    the same for ${ENC_ROUNDS:-10} rounds, f16 updates
#   fed_int8   the same for ${ENC_ROUNDS:-10} rounds, int8 updates
#   fed_dp8    user-level DP-SGD in every store, ε = 8 over the whole run, δ = 1e-4, ${ENC_ROUNDS:-10} rounds
#   fed_central8  store-level DP-FedAvg, noise added once by the aggregator, ε = 8, δ = 1e-4
#   fed_ft     f32 with 10% of shoppers held by the platform, which fine-tunes the fusion each round
#   fed_p10, fed_p10pt  the first recipe for 10 rounds with 10% of shoppers held by the platform,
#              from a random start or from the model the platform pretrains on its shoppers
#              (--pretrain-epochs 50): what transfer learning gives the stores
#   fed_dp8_p10, fed_dp8_p10pt  the same two with user-level DP-SGD in every store, ε = 8, δ = 1e-4
#   fed_dp8_p10_lr1, fed_dp8_p10pt_lr1  those two at the stores' lr 1e-3 (3e-3 above)
#   fed_dp8_p10pt_q1  fed_dp8_p10pt with every shopper of a store in every DP-SGD step (q = 1)
#   fed_dp8_p10pt_fusion  fed_dp8_p10pt with the stores training the fusion alone (--train-only
#              fusion: α, the content scale and the MLP head), the rest kept as pretrained
#   fed_dp8_p10pt_dense  the same with the sequence encoder trained too (--train-only fusion,sequence.)
#   fed_p10pt_fusion, fed_p10pt_dense  fed_p10pt (no DP) training those two subsets: what each can
#              give without noise
#   local      train_centralized --mode local-only: every store trains alone on its shoppers
# The centralized reference is the fused row of the quality table (`cargo bench --bench quality`).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DATA="${DATA:-$ROOT/../shared/data/ml-100k}"
OUT="${OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/fedfuse/federation}"
SEEDS="${SEEDS:-1}"
ROUNDS="${ROUNDS:-20}"
ENC_ROUNDS="${ENC_ROUNDS:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fedfuse/target}"
# glibc keeps the training's large, short-lived buffers instead of mapping them afresh each step.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}" MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-8000000000}" MALLOC_TOP_PAD_="${MALLOC_TOP_PAD_:-1000000000}"

if [[ ! -f "$DATA/u.data" ]]; then
  echo "skipping: no MovieLens-100K at $DATA (GroupLens terms forbid shipping it)" >&2
  exit 0
fi
only="fed_f32,fed_exact,fed_exact40,fed_e1x40,fed_e3,fed_e4x30,fed_e3d04,fed_e3nest,fed_e3forget,fed_e3pm,fed_e2,fed_e2b4,fed_e2lr5,fed_e2ctx25,fed_e3ctx25,fed_e2ctx25tie,fed_e3ctx25tie,fed_e4ctx25tie,fed_e3ctx25tie30,fed_e3ctx25tiex,fed_pool_e2,fed_b32e4,fed_tail30,fed_rounds40,fed_hold40,fed_slr15,fed_slr20,fed_m05,fed_prox01,fed_drift,fed_slr15x30,fed_f32_cos,fed_f16,fed_int8,fed_dp8,fed_central8,fed_ft,fed_p10,fed_p10pt,fed_dp8_p10,fed_dp8_p10pt,fed_dp8_p10_lr1,fed_dp8_p10pt_lr1,fed_dp8_p10pt_q1,fed_dp8_p10pt_fusion,fed_dp8_p10pt_dense,fed_p10pt_fusion,fed_p10pt_dense,local"
case "${1:-}" in
  --only) only="$2" ;;
  --render) only="" ;;
esac

# The centralized shape; each run brings its recipe.
run_quickstart() {
  local name="$1"; shift
  echo "== $name, seed $SEED" >&2
  cargo run --release --quiet --example quickstart -- --data "movielens:$DATA" --seed "$SEED" \
    --dim 64 --max-len 50 --head 16 "$@" \
    --report "$DIR/$name.json" 2>&1 | tee "$DIR/$name.log" | grep -E '^ *[0-9]+ |worst|served|bytes|fine-tuning' >&2
}
# The first federated recipe: two local epochs of small batches per round (best of the
# local-steps / batch / lr grid in the federation issue's notes), FedAvg, the last model served (the default).
quickstart() {
  local name="$1"; shift
  run_quickstart "$name" --local-epochs 2 --batch-size 8 --lr 3e-3 "$@"
}
for SEED in $SEEDS; do
DIR="$OUT/seed-$SEED"
mkdir -p "$DIR"
for run in ${only//,/ }; do
  case "$run" in
    fed_f32) quickstart fed_f32 --rounds "$ROUNDS" --encoding f32 --lr-schedule constant ;;
    fed_b32e4) run_quickstart fed_b32e4 --rounds "$ROUNDS" --encoding f32 --lr-schedule constant \
      --local-epochs 4 --batch-size 32 --lr 3e-3 --serve best-validated ;;
    fed_tail30) quickstart fed_tail30 --rounds 30 --encoding f32 --lr-schedule constant --serve tail-average:auto ;;
    fed_rounds40) quickstart fed_rounds40 --rounds 40 --encoding f32 --lr-schedule constant ;;
    fed_hold40) quickstart fed_hold40 --rounds 40 --encoding f32 --lr-schedule cosine --lr-hold-fraction 0.6 --min-lr-fraction 0.05 ;;
    fed_exact) quickstart fed_exact --rounds 20 --encoding f32 --lr-schedule constant --in-batch 0 --uniform 1682 ;;
    fed_e1x40) run_quickstart fed_e1x40 --local-epochs 1 --batch-size 8 --lr 3e-3 --rounds 40 --encoding f32 --lr-schedule constant ;;
    fed_e3) run_quickstart fed_e3 --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant ;;
    fed_e4x30) run_quickstart fed_e4x30 --local-epochs 4 --batch-size 8 --lr 3e-3 --rounds 30 --encoding f32 --lr-schedule constant ;;
    fed_e3d04) run_quickstart fed_e3d04 --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --dropout 0.4 ;;
    fed_e3nest) run_quickstart fed_e3nest --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant \
      --server-optimizer fedavgm --server-lr 0.7 --server-momentum 0.9 --server-nesterov ;;
    fed_e3forget) run_quickstart fed_e3forget --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --forget-optimizer ;;
    fed_e3pm) run_quickstart fed_e3pm --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --pool-moments ;;
    fed_e2) run_quickstart fed_e2 --local-epochs 2 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant ;;
    fed_e2b4) run_quickstart fed_e2b4 --local-epochs 2 --batch-size 4 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant ;;
    fed_e2lr5) run_quickstart fed_e2lr5 --local-epochs 2 --batch-size 8 --lr 5e-3 --rounds 20 --encoding f32 --lr-schedule constant ;;
    fed_e2ctx25) run_quickstart fed_e2ctx25 --local-epochs 2 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --window-stride 25 ;;
    fed_e3ctx25) run_quickstart fed_e3ctx25 --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --window-stride 25 ;;
    fed_e2ctx25tie) run_quickstart fed_e2ctx25tie --local-epochs 2 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --window-stride 25 --shuffle-same-time ;;
    fed_e3ctx25tie) run_quickstart fed_e3ctx25tie --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --window-stride 25 --shuffle-same-time ;;
    fed_e3ctx25tie30) run_quickstart fed_e3ctx25tie30 --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 30 --encoding f32 --lr-schedule constant --window-stride 25 --shuffle-same-time ;;
    fed_e3ctx25tiex) run_quickstart fed_e3ctx25tiex --local-epochs 3 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --window-stride 25 --shuffle-same-time --in-batch 0 --uniform 1682 ;;
    fed_e4ctx25tie) run_quickstart fed_e4ctx25tie --local-epochs 4 --batch-size 8 --lr 3e-3 --rounds 20 --encoding f32 --lr-schedule constant --window-stride 25 --shuffle-same-time ;;
    fed_pool_e2) run_quickstart fed_pool_e2 --local-epochs 2 --batch-size 8 --lr 3e-3 --rounds 15 --encoding f32 --lr-schedule constant --pool-stores ;;
    fed_exact40) quickstart fed_exact40 --rounds 40 --encoding f32 --lr-schedule constant --in-batch 0 --uniform 1682 ;;
    fed_slr15) quickstart fed_slr15 --rounds 20 --encoding f32 --lr-schedule constant --server-lr 1.5 ;;
    fed_slr20) quickstart fed_slr20 --rounds 20 --encoding f32 --lr-schedule constant --server-lr 2.0 ;;
    fed_m05) quickstart fed_m05 --rounds 20 --encoding f32 --lr-schedule constant --server-optimizer fedavgm --server-momentum 0.5 ;;
    fed_prox01) quickstart fed_prox01 --rounds 20 --encoding f32 --lr-schedule constant --proximal-mu 0.01 ;;
    fed_drift) quickstart fed_drift --rounds 20 --encoding f32 --lr-schedule constant --drift-correction ;;
    fed_slr15x30) quickstart fed_slr15x30 --rounds 30 --encoding f32 --lr-schedule constant --server-lr 1.5 ;;
    fed_f32_cos) quickstart fed_f32_cos --rounds "$ROUNDS" --encoding f32 --lr-schedule cosine ;;
    fed_f16) quickstart fed_f16 --rounds "$ENC_ROUNDS" --encoding f16 --lr-schedule constant ;;
    fed_int8) quickstart fed_int8 --rounds "$ENC_ROUNDS" --encoding int8 --lr-schedule constant ;;
    fed_dp8) quickstart fed_dp8 --rounds "$ENC_ROUNDS" --target-epsilon 8 --delta 1e-4 --lr-schedule constant ;;
    fed_central8) quickstart fed_central8 --rounds "$ENC_ROUNDS" --store-level-epsilon 8 --delta 1e-4 --lr-schedule cosine ;;
    fed_ft) quickstart fed_ft --rounds "$ENC_ROUNDS" --platform-share 0.1 --lr-schedule constant ;;
    fed_p10) quickstart fed_p10 --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 ;;
    fed_p10pt) quickstart fed_p10pt --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 --pretrain-epochs 50 ;;
    fed_dp8_p10) quickstart fed_dp8_p10 --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --target-epsilon 8 --delta 1e-4 ;;
    fed_dp8_p10_lr1) run_quickstart fed_dp8_p10_lr1 --local-epochs 2 --batch-size 8 --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --target-epsilon 8 --delta 1e-4 --lr 1e-3 ;;
    fed_dp8_p10pt_lr1) run_quickstart fed_dp8_p10pt_lr1 --local-epochs 2 --batch-size 8 --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --target-epsilon 8 --delta 1e-4 --pretrain-epochs 50 --lr 1e-3 ;;
    fed_dp8_p10pt_q1) quickstart fed_dp8_p10pt_q1 --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --target-epsilon 8 --delta 1e-4 --pretrain-epochs 50 --dp-batch 1000 ;;
    fed_dp8_p10pt) quickstart fed_dp8_p10pt --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --target-epsilon 8 --delta 1e-4 --pretrain-epochs 50 ;;
    fed_dp8_p10pt_fusion) quickstart fed_dp8_p10pt_fusion --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --target-epsilon 8 --delta 1e-4 --pretrain-epochs 50 --train-only fusion ;;
    fed_dp8_p10pt_dense) quickstart fed_dp8_p10pt_dense --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --target-epsilon 8 --delta 1e-4 --pretrain-epochs 50 --train-only fusion,sequence. ;;
    fed_p10pt_fusion) quickstart fed_p10pt_fusion --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --pretrain-epochs 50 --train-only fusion ;;
    fed_p10pt_dense) quickstart fed_p10pt_dense --rounds 10 --encoding f32 --lr-schedule constant --platform-share 0.1 \
      --pretrain-epochs 50 --train-only fusion,sequence. ;;
    local)
      echo "== local, seed $SEED" >&2
      cargo run --release --quiet --example train_centralized -- --data "movielens:$DATA" \
        --mode local-only --seeds "$SEED" --dim 64 --max-len 50 --head 16 --batch-size 32 \
        --lr 1e-3 --device cpu --quiet --report "$DIR/local.json" 2>&1 | tail -3 >&2 ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
done
# Seed 1 first: its reports give the detail tables.
mapfile -t dirs < <(ls -d "$OUT"/seed-* 2>/dev/null | sort -t- -k2 -n)
exec python3 "$HERE/federation.py" --reports "${dirs[@]}" --benchmarks "$ROOT/BENCHMARKS.md" \
  --note "${NOTE:-}"
