//! The shopper's interest from their recent items: causal self-attention (SASRec, Kang &
//! McAuley 2018) over the last L items, read at the most recent position.
//!
//! Histories are left-padded with item 0 and positions count back from the most recent item,
//! so the most recent item always has position 0 and padding can neither shift positions nor
//! (being masked out of attention) change the result.

use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::Int;

#[derive(Config, Debug)]
pub struct SequenceEncoderConfig {
    pub dim: usize,
    pub max_len: usize,
    #[config(default = 2)]
    pub layers: usize,
    #[config(default = 2)]
    pub heads: usize,
    #[config(default = 0.1)]
    pub dropout: f64,
}

impl SequenceEncoderConfig {
    pub fn init(&self, device: &Device) -> SequenceEncoder {
        SequenceEncoder {
            position: EmbeddingConfig::new(self.max_len, self.dim)
                .with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std: 0.05 })
                .init(device),
            encoder: TransformerEncoderConfig::new(self.dim, 2 * self.dim, self.heads, self.layers)
                .with_dropout(self.dropout)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(self.dim).init(device),
            max_len: self.max_len,
        }
    }
}

#[derive(Module, Debug)]
pub struct SequenceEncoder {
    position: Embedding,
    encoder: TransformerEncoder,
    norm: LayerNorm,
    max_len: usize,
}

impl SequenceEncoder {
    /// `items`: `[B, T, d]` item vectors of the history; `history`: `[B, T]` item ids, left-padded
    /// with 0. Returns the interest vector `[B, d]`.
    pub fn forward(&self, items: Tensor<3>, history: Tensor<2, Int>) -> Tensor<2> {
        let [b, t, d] = items.dims();
        let device = items.device();
        assert!(t <= self.max_len, "history of {t} exceeds max_len {}", self.max_len);
        // Position t counts back from the most recent item: T-1-t.
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device).neg().add_scalar(t as i64 - 1);
        let pos = self.position.forward(positions.reshape([1, t])).expand([b, t, d]);
        let pad = history.equal_elem(crate::PAD);
        let keep = pad.clone().bool_not().float().reshape([b, t, 1]);
        let x = (items + pos) * keep.clone();
        let causal = generate_autoregressive_mask(b, t, &device);
        let h = self
            .encoder
            .forward(TransformerEncoderInput::new(x).mask_pad(pad).mask_attn(causal));
        let h = self.norm.forward(h);
        h.slice([0..b, t - 1..t, 0..d]).reshape([b, d])
    }
}
