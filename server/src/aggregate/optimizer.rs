//! Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"): the round's
//! aggregate Δ is a pseudo-gradient; FedAvg adds η·Δ, the adaptive ones scale it per
//! coordinate by a second-moment estimate v, which tames coordinates that only a few stores
//! move (the rare items of an embedding table).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case")]
pub enum ServerOptimizerConfig {
    FedAvg { lr: f32 },
    FedAdagrad { lr: f32, beta1: f32, tau: f32 },
    FedAdam { lr: f32, beta1: f32, beta2: f32, tau: f32 },
    FedYogi { lr: f32, beta1: f32, beta2: f32, tau: f32 },
}

impl Default for ServerOptimizerConfig {
    fn default() -> Self {
        Self::FedAvg { lr: 1.0 }
    }
}

/// Optimiser state: O(model) for each moment it keeps.
pub struct ServerOptimizer {
    config: ServerOptimizerConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl ServerOptimizer {
    pub fn new(config: ServerOptimizerConfig, params: usize) -> Self {
        let moments = !matches!(config, ServerOptimizerConfig::FedAvg { .. });
        let tau2 = match config {
            ServerOptimizerConfig::FedAvg { .. } => 0.0,
            ServerOptimizerConfig::FedAdagrad { tau, .. }
            | ServerOptimizerConfig::FedAdam { tau, .. }
            | ServerOptimizerConfig::FedYogi { tau, .. } => tau * tau,
        };
        Self {
            config,
            m: if moments { vec![0.0; params] } else { Vec::new() },
            // v starts at τ² as in the paper's Algorithm 2.
            v: if moments { vec![tau2; params] } else { Vec::new() },
        }
    }

    /// Applies one round's aggregate `delta` to the global `params`.
    pub fn step(&mut self, params: &mut [f32], delta: &[f32]) {
        match self.config {
            ServerOptimizerConfig::FedAvg { lr } => {
                for (p, d) in params.iter_mut().zip(delta) {
                    *p += lr * d;
                }
            }
            ServerOptimizerConfig::FedAdagrad { lr, beta1, tau } => {
                for i in 0..params.len() {
                    let d = delta[i];
                    self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * d;
                    self.v[i] += d * d;
                    params[i] += lr * self.m[i] / (self.v[i].sqrt() + tau);
                }
            }
            ServerOptimizerConfig::FedAdam { lr, beta1, beta2, tau } => {
                for i in 0..params.len() {
                    let d = delta[i];
                    self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * d;
                    self.v[i] = beta2 * self.v[i] + (1.0 - beta2) * d * d;
                    params[i] += lr * self.m[i] / (self.v[i].sqrt() + tau);
                }
            }
            ServerOptimizerConfig::FedYogi { lr, beta1, beta2, tau } => {
                for i in 0..params.len() {
                    let d = delta[i];
                    let d2 = d * d;
                    self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * d;
                    self.v[i] -= (1.0 - beta2) * d2 * (self.v[i] - d2).signum();
                    params[i] += lr * self.m[i] / (self.v[i].sqrt() + tau);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimise f(x) = ½‖x − target‖² where each "round" the stores report Δ = −∇f = target − x.
    fn converges(config: ServerOptimizerConfig) -> f32 {
        let target = [3.0f32, -2.0, 0.5];
        let mut x = [0f32; 3];
        let mut opt = ServerOptimizer::new(config, 3);
        for _ in 0..500 {
            let delta: Vec<f32> = target.iter().zip(&x).map(|(t, x)| t - x).collect();
            opt.step(&mut x, &delta);
        }
        target.iter().zip(&x).map(|(t, x)| (t - x).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn every_optimiser_reaches_the_optimum_of_a_quadratic() {
        assert!(converges(ServerOptimizerConfig::FedAvg { lr: 0.5 }) < 1e-4);
        assert!(
            converges(ServerOptimizerConfig::FedAdagrad {
                lr: 0.3,
                beta1: 0.0,
                tau: 1e-3
            }) < 1e-2
        );
        assert!(
            converges(ServerOptimizerConfig::FedAdam {
                lr: 0.05,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            }) < 5e-2
        );
        assert!(
            converges(ServerOptimizerConfig::FedYogi {
                lr: 0.05,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            }) < 5e-2
        );
    }

    #[test]
    fn fedavg_with_lr_one_adds_the_aggregate() {
        let mut x = [1.0f32, 2.0];
        ServerOptimizer::new(ServerOptimizerConfig::FedAvg { lr: 1.0 }, 2).step(&mut x, &[0.5, -1.0]);
        assert_eq!(x, [1.5, 1.0]);
    }
}
