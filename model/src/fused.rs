//! The fused recommender: four branch scores combined by learned weights.
//!
//! - collaborative: the mean ID vector of the history · the candidate's ID vector;
//! - content: cosine of the history's mean content vector and the candidate's, times a learned
//!   scale (a cosine alone is bounded by 1 and would be drowned by the unbounded dot products);
//! - sequence: the encoder's interest vector · the candidate's item vector (ID + content);
//! - MLP: a small head over [interest, item, interest ⊙ item], the non-linear interaction the
//!   dot products cannot express.
//!
//! score = Σₖ softmax(α)ₖ · sₖ, with α learned: the weighted-average fusion of a model
//! ensemble, with the weights trained instead of hand-set.
//!
//! Every state is computed at every position of the history (profiles as causal running
//! means), so training scores all next-item predictions of a history in one pass.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::Int;
use burn::tensor::activation::{relu, softmax};

use crate::catalog::CatalogTensors;
use crate::dense::{Dense, DenseConfig};
use crate::item_tower::{ItemTower, ItemTowerConfig, ItemVectors};
use crate::sequence::{SequenceEncoder, SequenceEncoderConfig};

/// The branches, in the order of α.
pub const BRANCHES: [&str; 4] = ["cf", "content", "seq", "mlp"];

#[derive(Config, Debug)]
pub struct FusedConfig {
    pub items: ItemTowerConfig,
    pub sequence: SequenceEncoderConfig,
    /// Hidden width of the MLP head. Its cost per (position, candidate) pair is
    /// dim × head, against dim for a dot-product branch.
    #[config(default = 16)]
    pub head: usize,
}

impl FusedConfig {
    pub fn init(&self, device: &Device) -> FusedRecommender {
        let (d, h) = (self.items.dim, self.head);
        FusedRecommender {
            items: self.items.init(device),
            sequence: self.sequence.init(device),
            head_shopper: DenseConfig::new(d, h).init(device),
            head_item: DenseConfig::new(d, h).with_bias(false).init(device),
            head_product: DenseConfig::new(d, h).with_bias(false).init(device),
            head_out: DenseConfig::new(h, 1).init(device),
            alpha: Initializer::Zeros.init([1, BRANCHES.len()], device),
            content_scale: Initializer::Constant { value: 5f64.ln() }.init([1, 1], device),
            only: None,
            items_by_id: false,
        }
    }
}

/// What a model scores with: the fused branches, one branch alone, or SASRec.
///
/// SASRec (Kang & McAuley 2018) is the sequence branch reading and scoring items by their ID
/// vectors alone: the published baseline the quality bar quotes, trained here by the
/// same loop, split and metrics as the fused model so that the two are compared like for like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    Fused,
    /// One of [`BRANCHES`], trained and scored alone.
    Branch(usize),
    /// The sequence branch over item-ID vectors (no content features).
    SasRec,
}

impl Scoring {
    /// Sets the model up to score this way (the model's parameters do not change: a branch
    /// left out, or SASRec's unused content tables, simply receive no gradient).
    pub fn apply(self, model: &mut FusedRecommender) {
        (model.only, model.items_by_id) = match self {
            Scoring::Fused => (None, false),
            Scoring::Branch(k) => (Some(k), false),
            Scoring::SasRec => (Some(2), true),
        };
    }
}

impl std::str::FromStr for Scoring {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(Scoring::Fused),
            "sasrec" => Ok(Scoring::SasRec),
            b => BRANCHES
                .iter()
                .position(|n| *n == b)
                .map(Scoring::Branch)
                .ok_or_else(|| format!("unknown branch {b:?}: use fused, cf, content, seq, mlp or sasrec")),
        }
    }
}

#[derive(Module, Debug)]
pub struct FusedRecommender {
    pub items: ItemTower,
    pub sequence: SequenceEncoder,
    head_shopper: Dense,
    head_item: Dense,
    head_product: Dense,
    head_out: Dense,
    /// Fusion logits `[E, 4]`; softmax(α) weighs the branches.
    pub alpha: Param<Tensor<2>>,
    /// log of the content branch's scale, `[E, 1]`.
    content_scale: Param<Tensor<2>>,
    /// Score with this branch alone (to train and measure single branches).
    #[module(skip)]
    pub only: Option<usize>,
    /// The sequence branch and the MLP head see items by their ID vectors alone (SASRec).
    #[module(skip)]
    pub items_by_id: bool,
}

/// Shoppers as the model sees them, after every position of their histories: `[B, T, d]`
/// each (profiles, interest), plus the encoder's attention of the last position (`[B, T]`).
#[derive(Debug, Clone)]
pub struct ShopperStates {
    pub id_profile: Tensor<3>,
    pub content_profile: Tensor<3>,
    pub interest: Tensor<3>,
    pub attention: Option<Tensor<2>>,
}

impl ShopperStates {
    /// Only the most recent position (T = 1): the shopper now.
    pub fn last(&self) -> ShopperStates {
        let t = self.interest.dims()[1];
        let at = |x: &Tensor<3>| x.clone().narrow(1, t - 1, 1);
        ShopperStates {
            id_profile: at(&self.id_profile),
            content_profile: at(&self.content_profile),
            interest: at(&self.interest),
            attention: self.attention.clone(),
        }
    }
}

/// Scores `[B, T, C]` per branch (`None` for branches a single-branch model skips) and fused.
#[derive(Debug, Clone)]
pub struct Scores {
    pub branches: [Option<Tensor<3>>; 4],
    pub fused: Tensor<3>,
}

/// x / ‖x‖ along the last axis. The ε sits inside the square root: a zero vector (the profile
/// at a padded position) must have a finite gradient, and √ has none at 0.
fn l2_normalise(x: Tensor<3>) -> Tensor<3> {
    let norm = (x.clone().powf_scalar(2.0).sum_dim(2) + 1e-12).sqrt();
    x / norm
}

/// `[B, T, d]` × `[E, C, d]`ᵀ → `[B, T, C]`, E = 1 or B.
fn dot_all(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    let [bs, t, d] = a.dims();
    let [e, c, _] = b.dims();
    if e == 1 {
        a.reshape([1, bs * t, d]).matmul(b.swap_dims(1, 2)).reshape([bs, t, c])
    } else {
        a.matmul(b.swap_dims(1, 2))
    }
}

/// Row-wise dot product of `[B, T, d]` and `[B, T, d]` → `[B, T, 1]`.
fn dot_pairs(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    (a * b).sum_dim(2)
}

impl FusedRecommender {
    /// The item vector the sequence branch and the MLP head see.
    fn item_vector(&self, v: &ItemVectors) -> Tensor<3> {
        if self.items_by_id { v.id.clone() } else { v.item() }
    }

    fn wants(&self, k: usize) -> bool {
        self.only.is_none_or(|o| o == k)
    }

    /// Encodes histories `[B, T]` (left-padded with 0) at every position.
    pub fn encode(&self, history: Tensor<2, Int>, catalog: &CatalogTensors) -> ShopperStates {
        let vectors = self.item_vectors(history.clone(), catalog);
        self.encode_vectors(history, &vectors)
    }

    /// Vectors of items `ids` (`[E, N]`) as this model reads them: by ID alone for SASRec (the
    /// content tables untouched), ID and content otherwise.
    ///
    /// Training must not compute what the loss does not read: burn's autodiff keeps every
    /// tracked result the backward pass never reaches in its graph, and scans them all at
    /// each step, so unread content vectors slowed a SASRec epoch 30-fold within 11 epochs.
    pub fn item_vectors(&self, ids: Tensor<2, Int>, catalog: &CatalogTensors) -> ItemVectors {
        if self.items_by_id {
            self.items.id_vectors(ids)
        } else {
            self.items.vectors(ids, catalog)
        }
    }

    /// Vectors of the whole catalog, items 1..=n, as `[1, n, d]`, as this model reads them.
    pub fn catalog_vectors(&self, catalog: &CatalogTensors) -> ItemVectors {
        self.item_vectors(catalog.item_ids(), catalog)
    }

    /// As [`encode`](Self::encode), from the history's item vectors.
    pub fn encode_vectors(&self, history: Tensor<2, Int>, vectors: &ItemVectors) -> ShopperStates {
        let [b, t] = history.dims();
        let keep = history.clone().equal_elem(crate::PAD).bool_not().float().reshape([b, t, 1]);
        let count = keep.clone().cumsum(1).clamp_min(1.0);
        // A state no scoring branch reads is a constant zero, not computed (see
        // `item_vectors` on why training must not compute what it does not read).
        let unread = || Tensor::<3>::zeros(vectors.id.dims(), &vectors.id.device());
        let running_mean = |x: &Tensor<3>| (x.clone() * keep.clone()).cumsum(1) / count.clone();
        let (interest, attention) = if self.wants(2) || self.wants(3) {
            let encoded = self.sequence.forward(self.item_vector(vectors), history);
            (encoded.interest, encoded.attention)
        } else {
            (unread(), None)
        };
        ShopperStates {
            id_profile: if self.wants(0) { running_mean(&vectors.id) } else { unread() },
            content_profile: if self.wants(1) {
                running_mean(&vectors.content)
            } else {
                unread()
            },
            interest,
            attention,
        }
    }

    fn content_scale(&self) -> Tensor<3> {
        let e = self.content_scale.dims()[0];
        self.content_scale.val().exp().reshape([e, 1, 1])
    }

    /// Scores every candidate (`[E, C]` item vectors) at every position of every shopper.
    pub fn score(&self, s: &ShopperStates, candidates: &ItemVectors) -> Scores {
        let item = self.item_vector(candidates);
        let cf = self.wants(0).then(|| dot_all(s.id_profile.clone(), candidates.id.clone()));
        let content = self.wants(1).then(|| {
            dot_all(
                l2_normalise(s.content_profile.clone()),
                l2_normalise(candidates.content.clone()),
            ) * self.content_scale()
        });
        let seq = self.wants(2).then(|| dot_all(s.interest.clone(), item.clone()));
        let mlp = self.wants(3).then(|| self.mlp_all(s.interest.clone(), item));
        self.fused([cf, content, seq, mlp])
    }

    /// Scores one item per position (`[B, T]` item vectors): the training targets.
    pub fn score_pairs(&self, s: &ShopperStates, targets: &ItemVectors) -> Scores {
        let item = self.item_vector(targets);
        let cf = self.wants(0).then(|| dot_pairs(s.id_profile.clone(), targets.id.clone()));
        let content = self.wants(1).then(|| {
            dot_pairs(l2_normalise(s.content_profile.clone()), l2_normalise(targets.content.clone())) * self.content_scale()
        });
        let seq = self.wants(2).then(|| dot_pairs(s.interest.clone(), item.clone()));
        let mlp = self.wants(3).then(|| {
            let hidden = self.head_shopper.forward(s.interest.clone())
                + self.head_item.forward(item.clone())
                + self.head_product.forward(s.interest.clone() * item);
            self.head_out.forward(relu(hidden))
        });
        self.fused([cf, content, seq, mlp])
    }

    /// The MLP head for every (position, candidate) pair, as one matmul over all pairs and
    /// without materialising the `[B, T, C, d]` products. Hidden unit h before the ReLU is
    ///   A(s)ₕ + (W_i·i)ₕ + (W_p(s ⊙ i))ₕ = [ (s ⊙ W_p[:, h]) + W_i[:, h] , A(s)ₕ ] · [ i , 1 ],
    /// so each (position, h) row is one vector of length d + 1 dotted with every candidate.
    fn mlp_all(&self, interest: Tensor<3>, item: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = interest.dims();
        let [e, c, _] = item.dims();
        let w_product = self.head_product.weight.val(); // [E', d, H]
        let w_item = self.head_item.weight.val();
        let [ew, _, h] = w_product.dims();
        let rows = (interest.clone().reshape([b, t, d, 1]) * w_product.reshape([ew, 1, d, h]) + w_item.reshape([ew, 1, d, h]))
            .swap_dims(2, 3); // [B, T, H, d]
        let shopper = self.head_shopper.forward(interest).reshape([b, t, h, 1]);
        let rows = Tensor::cat(vec![rows, shopper], 3); // [B, T, H, d + 1]
        let ones = Tensor::<3>::ones([e, c, 1], &item.device());
        let columns = Tensor::cat(vec![item, ones], 2).swap_dims(1, 2); // [E, d + 1, C]
        let pre = if e == 1 {
            rows.reshape([1, b * t * h, d + 1]).matmul(columns)
        } else {
            rows.reshape([b, t * h, d + 1]).matmul(columns)
        };
        let hidden = relu(pre).reshape([b * t, h, c]);
        let w_out = self.head_out.weight.val(); // [E', H, 1]
        let out = if ew == 1 {
            w_out.reshape([1, 1, h]).matmul(hidden)
        } else {
            w_out
                .reshape([b, 1, 1, h])
                .matmul(hidden.reshape([b, t, h, c]))
                .reshape([b * t, 1, c])
        };
        let mut score = out.reshape([b, t, c]);
        if let Some(bias) = &self.head_out.bias {
            score = score + bias.val();
        }
        score
    }

    fn fused(&self, branches: [Option<Tensor<3>>; 4]) -> Scores {
        let fused = match self.only {
            Some(k) => branches[k].clone().expect("the selected branch is computed"),
            None => {
                let e = self.alpha.dims()[0];
                let w = softmax(self.alpha.val(), 1);
                branches
                    .iter()
                    .enumerate()
                    .map(|(k, s)| s.clone().expect("all branches are computed") * w.clone().narrow(1, k, 1).reshape([e, 1, 1]))
                    .reduce(|a, b| a + b)
                    .expect("four branches")
            }
        };
        Scores { branches, fused }
    }

    /// The fusion weights softmax(α), for reports and explanations.
    pub fn fusion_weights(&self) -> Vec<f32> {
        softmax(self.alpha.val(), 1).to_data().try_to_vec::<f32>().unwrap_or_default()
    }
}
