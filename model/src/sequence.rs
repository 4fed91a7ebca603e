//! The shopper's interest from their recent items, at every position of the history.
//!
//! The default encoder is causal self-attention (SASRec, Kang & McAuley 2018); an LSTM
//! (burn's `Lstm`), the classic recurrent model of sessions, is the alternative. Both give
//! the interest after each item, so one forward pass trains every next-item prediction of a
//! history at once, and the last position is the shopper's current interest.
//!
//! Histories are left-padded with item 0. Positions count from the oldest item in the window,
//! so padding can shift nothing; padded keys are masked out of attention and padded inputs are
//! zero, so padding does not change any real position's output (the LSTM reads a right-aligned
//! copy for the same reason: its biases would otherwise drift through the padding).

use burn::module::Param;
use burn::nn::{Initializer, Lstm, LstmConfig};
use burn::prelude::*;
use burn::tensor::Int;

use crate::attention::{AttentionBlock, AttentionBlockConfig};
use crate::dense::{Norm, NormConfig};
use crate::dropout::{SeededDropout, SeededDropoutConfig};

/// Which sequence encoder.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// Causal self-attention blocks (SASRec).
    Attention,
    /// One LSTM layer.
    Lstm,
}

impl std::str::FromStr for EncoderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "attention" | "sasrec" => Ok(Self::Attention),
            "lstm" => Ok(Self::Lstm),
            other => Err(format!("unknown encoder {other:?}: use attention or lstm")),
        }
    }
}

#[derive(Config, Debug)]
pub struct SequenceEncoderConfig {
    pub dim: usize,
    pub max_len: usize,
    #[config(default = "EncoderKind::Attention")]
    pub kind: EncoderKind,
    #[config(default = 2)]
    pub layers: usize,
    #[config(default = 2)]
    pub heads: usize,
    #[config(default = 0.2)]
    pub dropout: f64,
}

impl SequenceEncoderConfig {
    pub fn init(&self, device: &Device) -> SequenceEncoder {
        let attention = self.kind == EncoderKind::Attention;
        SequenceEncoder {
            position: Initializer::Normal { mean: 0.0, std: 0.05 }.init([1, self.max_len.max(1), self.dim], device),
            blocks: if attention {
                (0..self.layers)
                    .map(|_| {
                        AttentionBlockConfig::new(self.dim)
                            .with_heads(self.heads)
                            .with_dropout(self.dropout)
                            .init(device)
                    })
                    .collect()
            } else {
                Vec::new()
            },
            lstm: (!attention).then(|| LstmConfig::new(self.dim, self.dim, true).init(device)),
            norm: NormConfig::new(self.dim).init(device),
            dropout: SeededDropoutConfig::new(self.dropout).init(),
            max_len: self.max_len,
        }
    }
}

#[derive(Module, Debug)]
pub struct SequenceEncoder {
    /// Position vectors `[E, max_len, d]` (E = 1, or per shopper under DP-SGD).
    position: Param<Tensor<3>>,
    blocks: Vec<AttentionBlock>,
    lstm: Option<Lstm>,
    norm: Norm,
    dropout: SeededDropout,
    max_len: usize,
}

/// The interest after every position, and (attention only) the last block's attention of the
/// most recent position over the history, averaged over heads: `[B, T]`.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub interest: Tensor<3>,
    pub attention: Option<Tensor<2>>,
}

impl SequenceEncoder {
    /// Rows of the position table for `positions` `[B, T]` → `[B, T, d]`.
    fn position_vectors(&self, positions: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = positions.dims();
        let table = self.position.val();
        let [e, _, d] = table.dims();
        if e == 1 {
            table
                .squeeze_dim::<2>(0)
                .select(0, positions.reshape([b * t]))
                .reshape([b, t, d])
        } else {
            table.gather(1, positions.reshape([b, t, 1]).expand([b, t, d]))
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn is_lstm(&self) -> bool {
        self.lstm.is_some()
    }

    /// `items`: `[B, T, d]` item vectors of the history; `history`: `[B, T]` item ids,
    /// left-padded with 0. Returns the interest after each position, `[B, T, d]` (rows at
    /// padded positions are meaningless and must be ignored).
    pub fn forward(&self, items: Tensor<3>, history: Tensor<2, Int>) -> Encoded {
        let [b, t, d] = items.dims();
        let device = items.device();
        assert!(t <= self.max_len, "history of {t} exceeds max_len {}", self.max_len);
        let pad = history.equal_elem(crate::PAD);
        let pads = pad.clone().int().sum_dim(1); // [B, 1]
        let keep = pad.clone().bool_not().float().reshape([b, t, 1]);
        if let Some(lstm) = &self.lstm {
            // Right-align, run, and shift the outputs back into place.
            let j = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]).expand([b, t]);
            let from = (j.clone() + pads.clone().expand([b, t])).clamp_max(t as i64 - 1);
            let aligned = (items * keep.clone()).gather(1, from.reshape([b, t, 1]).expand([b, t, d]));
            let (out, _) = lstm.forward(self.dropout.forward(aligned), None);
            let back = (j - pads.expand([b, t])).clamp_min(0);
            let out = out.gather(1, back.reshape([b, t, 1]).expand([b, t, d])) * keep;
            return Encoded {
                interest: self.norm.forward(out),
                attention: None,
            };
        }
        let positions =
            (Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]).expand([b, t]) - pads.expand([b, t])).clamp_min(0);
        let x = self.dropout.forward((items + self.position_vectors(positions)) * keep);
        // Additive mask: a query sees itself and earlier, non-padded keys.
        let causal = Tensor::<2>::ones([t, t], &device)
            .triu(1)
            .mul_scalar(-1e9)
            .reshape([1, 1, t, t]);
        let padded = pad.float().mul_scalar(-1e9).reshape([b, 1, 1, t]);
        let mask = causal.expand([b, 1, t, t]) + padded.expand([b, 1, t, t]);
        let mut h = x;
        let mut attention = None;
        for (i, block) in self.blocks.iter().enumerate() {
            if i + 1 == self.blocks.len() {
                let (out, weights) = block.forward_with_attention(h, mask.clone());
                h = out;
                let heads = weights.dims()[1];
                attention = Some(
                    weights
                        .narrow(2, t - 1, 1)
                        .sum_dim(1)
                        .div_scalar(heads as f64)
                        .reshape([b, t]),
                );
            } else {
                h = block.forward(h, mask.clone());
            }
        }
        Encoded {
            interest: self.norm.forward(h),
            attention,
        }
    }
}
