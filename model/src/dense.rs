//! A dense layer whose weights carry a leading "example" axis.
//!
//! Stored with that axis of size 1 (`[1, in, out]`), a `Dense` broadcasts over every example
//! of a batch like any linear layer. For user-level DP-SGD the same parameters are expanded
//! to one copy per shopper (`[B, in, out]`, see [`crate::dpsgd`]): one batched forward and
//! one backward pass then give every shopper's own gradient, with no second code path
//! through the model.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;

#[derive(Config, Debug)]
pub struct DenseConfig {
    pub input: usize,
    pub output: usize,
    #[config(default = true)]
    pub bias: bool,
}

impl DenseConfig {
    pub fn init(&self, device: &Device) -> Dense {
        // burn's Linear default (Kaiming uniform with gain 1/√3): U(−1/√in, 1/√in).
        let bound = 1.0 / (self.input.max(1) as f64).sqrt();
        let init = Initializer::Uniform { min: -bound, max: bound };
        Dense {
            weight: init.init([1, self.input, self.output], device),
            bias: self.bias.then(|| init.init([1, 1, self.output], device)),
        }
    }
}

#[derive(Module, Debug)]
pub struct Dense {
    /// `[E, in, out]`, E = 1 (shared) or one copy per example.
    pub weight: Param<Tensor<3>>,
    /// `[E, 1, out]`.
    pub bias: Option<Param<Tensor<3>>>,
}

impl Dense {
    /// `x`: `[B, N, in]` → `[B, N, out]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let w = self.weight.val();
        let [b, n, i] = x.dims();
        let out = w.dims()[2];
        let y = if w.dims()[0] == 1 {
            // Shared weights: one large matmul instead of B small ones.
            x.reshape([1, b * n, i]).matmul(w).reshape([b, n, out])
        } else {
            x.matmul(w)
        };
        match &self.bias {
            Some(bias) => y + bias.val(),
            None => y,
        }
    }
}

/// Layer normalisation over the last axis, with `[E, 1, d]` scale and shift (see [`Dense`]).
#[derive(Config, Debug)]
pub struct NormConfig {
    pub dim: usize,
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl NormConfig {
    pub fn init(&self, device: &Device) -> Norm {
        Norm {
            gamma: Initializer::Ones.init([1, 1, self.dim], device),
            beta: Initializer::Zeros.init([1, 1, self.dim], device),
            epsilon: self.epsilon,
        }
    }
}

#[derive(Module, Debug)]
pub struct Norm {
    pub gamma: Param<Tensor<3>>,
    pub beta: Param<Tensor<3>>,
    epsilon: f64,
}

impl Norm {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mean = x.clone().mean_dim(2);
        let centred = x - mean;
        let var = centred.clone().powf_scalar(2.0).mean_dim(2);
        centred / (var + self.epsilon).sqrt() * self.gamma.val() + self.beta.val()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn shared_and_per_example_weights_agree() {
        let device = Device::flex();
        device.seed(3);
        let dense = DenseConfig::new(3, 2).init(&device);
        let x = Tensor::<3>::random([4, 5, 3], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let shared = dense.forward(x.clone());
        let w = dense.weight.val().expand([4, 3, 2]);
        let b = dense.bias.as_ref().unwrap().val().expand([4, 1, 2]);
        let expanded = Dense {
            weight: Param::from_tensor(w),
            bias: Some(Param::from_tensor(b)),
        };
        let per_example = expanded.forward(x);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            shared.to_data().try_to_vec().unwrap(),
            per_example.to_data().try_to_vec().unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn norm_normalises_the_last_axis() {
        let device = Device::flex();
        let norm = NormConfig::new(4).init(&device);
        let x = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0], [1, 2, 4]),
            &device,
        );
        let y: Vec<f32> = norm.forward(x).to_data().try_to_vec().unwrap();
        for row in y.chunks(4) {
            let mean: f32 = row.iter().sum::<f32>() / 4.0;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{row:?}");
        }
    }
}
