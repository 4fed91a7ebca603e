//! The fused recommender: four branch scores combined by learned weights.
//!
//! - collaborative: the mean ID vector of the history · the candidate's ID vector;
//! - content: cosine of the history's mean content vector and the candidate's;
//! - sequence: the self-attention interest vector · the candidate's item vector (ID + content);
//! - MLP: a small head over [interest, item, interest ⊙ item].
//!
//! score = Σₖ softmax(α)ₖ · sₖ, with α learned: the weighted-average fusion of a model
//! ensemble, with the weights trained instead of hand-set.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Int;
use burn::tensor::activation::{relu, softmax};

use crate::catalog::CatalogTensors;
use crate::item_tower::{ItemTower, ItemTowerConfig};
use crate::sequence::{SequenceEncoder, SequenceEncoderConfig};

/// The branches, in the order of α.
pub const BRANCHES: [&str; 4] = ["cf", "content", "seq", "mlp"];

#[derive(Config, Debug)]
pub struct FusedConfig {
    pub items: ItemTowerConfig,
    pub sequence: SequenceEncoderConfig,
}

impl FusedConfig {
    pub fn init(&self, device: &Device) -> FusedRecommender {
        let d = self.items.dim;
        let linear = |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        FusedRecommender {
            items: self.items.init(device),
            sequence: self.sequence.init(device),
            head_shopper: linear(d, d, true),
            head_item: linear(d, d, false),
            head_product: linear(d, d, false),
            head_out: linear(d, 1, true),
            alpha: Param::from_tensor(Tensor::zeros([BRANCHES.len()], device)),
            only: None,
        }
    }
}

#[derive(Module, Debug)]
pub struct FusedRecommender {
    pub items: ItemTower,
    pub sequence: SequenceEncoder,
    head_shopper: Linear,
    head_item: Linear,
    head_product: Linear,
    head_out: Linear,
    /// Fusion logits; softmax(α) weighs the branches.
    pub alpha: Param<Tensor<1>>,
    /// Score with this branch alone (to train and measure single branches).
    #[module(skip)]
    pub only: Option<usize>,
}

/// A batch of shoppers, as the model sees them: profiles and interest, `[B, d]` each.
#[derive(Debug, Clone)]
pub struct Shoppers {
    pub id_profile: Tensor<2>,
    pub content_profile: Tensor<2>,
    pub interest: Tensor<2>,
}

/// Scores `[B, C]` per branch and fused.
#[derive(Debug, Clone)]
pub struct Scores {
    pub branches: [Tensor<2>; 4],
    pub fused: Tensor<2>,
}

fn l2_normalise(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
    x / norm
}

impl FusedRecommender {
    /// Encodes histories `[B, T]` (left-padded with 0).
    pub fn encode(&self, history: Tensor<2, Int>, catalog: &CatalogTensors) -> Shoppers {
        let [b, t] = history.dims();
        let flat = history.clone().reshape([b * t]);
        let id = self.items.id_vectors(flat.clone());
        let d = id.dims()[1];
        let id = id.reshape([b, t, d]);
        let content = self.items.content_vectors(flat, catalog).reshape([b, t, d]);
        let keep = history.clone().equal_elem(crate::PAD).bool_not().float().reshape([b, t, 1]);
        let count = keep.clone().sum_dim(1).clamp_min(1.0);
        let id_profile = (id.clone() * keep.clone()).sum_dim(1).div(count.clone()).reshape([b, d]);
        let content_profile = (content.clone() * keep).sum_dim(1).div(count).reshape([b, d]);
        let interest = self.sequence.forward(id + content, history);
        Shoppers {
            id_profile,
            content_profile,
            interest,
        }
    }

    /// Scores candidates `[C]` for every shopper in the batch.
    pub fn score(&self, shoppers: &Shoppers, candidates: Tensor<1, Int>, catalog: &CatalogTensors) -> Scores {
        let id = self.items.id_vectors(candidates.clone());
        let content = self.items.content_vectors(candidates, catalog);
        let item = id.clone() + content.clone();
        let [b, d] = shoppers.interest.dims();
        let c = item.dims()[0];
        let cf = shoppers.id_profile.clone().matmul(id.transpose());
        let content_score = l2_normalise(shoppers.content_profile.clone()).matmul(l2_normalise(content).transpose());
        let seq = shoppers.interest.clone().matmul(item.clone().transpose());
        let product = shoppers.interest.clone().reshape([b, 1, d]) * item.clone().reshape([1, c, d]);
        let hidden = relu(
            self.head_shopper.forward(shoppers.interest.clone()).reshape([b, 1, d])
                + self.head_item.forward(item).reshape([1, c, d])
                + self.head_product.forward(product),
        );
        let mlp = self.head_out.forward(hidden).reshape([b, c]);
        let branches = [cf, content_score, seq, mlp];
        let fused = self.fuse(&branches);
        Scores { branches, fused }
    }

    /// softmax(α)-weighted sum of branch scores.
    pub fn fuse(&self, branches: &[Tensor<2>; 4]) -> Tensor<2> {
        if let Some(k) = self.only {
            return branches[k].clone();
        }
        let w = softmax(self.alpha.val(), 0);
        let mut total: Option<Tensor<2>> = None;
        for (k, s) in branches.iter().enumerate() {
            let term = s.clone() * w.clone().narrow(0, k, 1).reshape([1, 1]);
            total = Some(match total {
                None => term,
                Some(t) => t + term,
            });
        }
        total.expect("four branches")
    }

    /// The fusion weights softmax(α), for reports and explanations.
    pub fn fusion_weights(&self) -> Vec<f32> {
        softmax(self.alpha.val(), 0).to_data().try_to_vec::<f32>().unwrap_or_default()
    }
}
