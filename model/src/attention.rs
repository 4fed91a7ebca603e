//! One pre-norm transformer block with causal self-attention (SASRec's building block),
//! written on [`Dense`] and [`Norm`] so that its weights can be expanded per shopper for
//! DP-SGD (burn's `TransformerEncoder` keeps its weights 2-D).

use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};

use crate::dense::{Dense, DenseConfig, Norm, NormConfig};
use crate::dropout::{SeededDropout, SeededDropoutConfig};

#[derive(Config, Debug)]
pub struct AttentionBlockConfig {
    pub dim: usize,
    #[config(default = 2)]
    pub heads: usize,
    #[config(default = 0.2)]
    pub dropout: f64,
}

impl AttentionBlockConfig {
    pub fn init(&self, device: &Device) -> AttentionBlock {
        assert!(
            self.heads > 0 && self.dim.is_multiple_of(self.heads),
            "dim {} must be a multiple of heads {}",
            self.dim,
            self.heads
        );
        AttentionBlock {
            norm_attention: NormConfig::new(self.dim).init(device),
            qkv: DenseConfig::new(self.dim, 3 * self.dim).init(device),
            out: DenseConfig::new(self.dim, self.dim).init(device),
            norm_feed_forward: NormConfig::new(self.dim).init(device),
            feed_forward_in: DenseConfig::new(self.dim, 2 * self.dim).init(device),
            feed_forward_out: DenseConfig::new(2 * self.dim, self.dim).init(device),
            dropout: SeededDropoutConfig::new(self.dropout).init(),
            heads: self.heads,
        }
    }
}

#[derive(Module, Debug)]
pub struct AttentionBlock {
    norm_attention: Norm,
    qkv: Dense,
    out: Dense,
    norm_feed_forward: Norm,
    feed_forward_in: Dense,
    feed_forward_out: Dense,
    dropout: SeededDropout,
    heads: usize,
}

impl AttentionBlock {
    /// `x`: `[B, T, d]`; `mask`: `[B, 1, T, T]`, 0 where a query may attend to a key and a
    /// large negative number where it may not (later positions, padding).
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<4>) -> Tensor<3> {
        self.forward_with_attention(x, mask).0
    }

    /// As [`forward`](Self::forward), also returning the attention weights `[B, heads, T, T]`
    /// (for explanations).
    pub fn forward_with_attention(&self, x: Tensor<3>, mask: Tensor<4>) -> (Tensor<3>, Tensor<4>) {
        let [b, t, d] = x.dims();
        let (h, dh) = (self.heads, d / self.heads);
        let qkv = self.qkv.forward(self.norm_attention.forward(x.clone()));
        let split = |k: usize| qkv.clone().narrow(2, k * d, d).reshape([b, t, h, dh]).swap_dims(1, 2);
        let (q, k, v) = (split(0), split(1), split(2));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt()) + mask, 3);
        let context = self
            .dropout
            .forward(weights.clone())
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, t, d]);
        let x = x + self.dropout.forward(self.out.forward(context));
        let hidden = gelu(self.feed_forward_in.forward(self.norm_feed_forward.forward(x.clone())));
        (x + self.dropout.forward(self.feed_forward_out.forward(hidden)), weights)
    }
}
