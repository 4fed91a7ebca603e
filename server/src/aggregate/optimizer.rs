//! Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"): the round's
//! aggregate Δ is a pseudo-gradient; FedAvg adds η·Δ, the adaptive ones scale it per
//! coordinate by a second-moment estimate v, which tames coordinates that only a few stores
//! move (the rare items of an embedding table). FedAvgM (Hsu et al. 2019, "Measuring the
//! Effects of Non-Identical Data Distribution") keeps a heavy-ball velocity of the aggregates:
//! on non-IID stores the averaged Δ shrinks as their directions disagree, and the velocity
//! carries the direction they keep agreeing on across rounds.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case")]
pub enum ServerOptimizerConfig {
    FedAvg {
        lr: f32,
    },
    /// v ← β·v + Δ, x ← x + η·v: the effective step approaches η / (1 − β) on a steady Δ.
    /// With `nesterov`, x ← x + η·(β·v + Δ): the step looks ahead along the velocity, the
    /// outer optimiser of DiLoCo (Douillard et al. 2023: η 0.7, β 0.9 over inner AdamW), where
    /// it let many local steps per round match synchronous training.
    FedAvgM {
        lr: f32,
        momentum: f32,
        #[serde(default)]
        nesterov: bool,
    },
    FedAdagrad {
        lr: f32,
        beta1: f32,
        tau: f32,
    },
    FedAdam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        tau: f32,
    },
    FedYogi {
        lr: f32,
        beta1: f32,
        beta2: f32,
        tau: f32,
    },
}

impl Default for ServerOptimizerConfig {
    fn default() -> Self {
        Self::FedAvg { lr: 1.0 }
    }
}

impl ServerOptimizerConfig {
    /// Rejects settings that would diverge or divide by zero before a round is run with them.
    pub fn check(&self) -> Result<(), String> {
        let (lr, betas, tau): (f32, &[(&str, f32)], Option<f32>) = match self {
            Self::FedAvg { lr } => (*lr, &[], None),
            Self::FedAvgM { lr, momentum, .. } => (*lr, &[("momentum", *momentum)][..], None),
            Self::FedAdagrad { lr, beta1, tau } => (*lr, &[("beta1", *beta1)][..], Some(*tau)),
            Self::FedAdam { lr, beta1, beta2, tau } | Self::FedYogi { lr, beta1, beta2, tau } => {
                (*lr, &[("beta1", *beta1), ("beta2", *beta2)][..], Some(*tau))
            }
        };
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("[round] optimizer lr = {lr} must be a positive number"));
        }
        for (name, beta) in betas {
            if !(0.0..1.0).contains(beta) {
                return Err(format!("[round] optimizer {name} = {beta} must be in [0, 1)"));
            }
        }
        if let Some(tau) = tau
            && !(tau.is_finite() && tau > 0.0)
        {
            return Err(format!("[round] optimizer tau = {tau} must be a positive number"));
        }
        Ok(())
    }
}

/// What a restarted aggregator needs to go on with the server optimiser where it stopped: the
/// moments after the last committed round (empty for a moment the optimiser does not keep).
/// Without them a resumed FedAvgM or FedAdam would restart its velocity from zero, and the
/// run would no longer be the one it would have been uninterrupted.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptimizerState {
    pub config: ServerOptimizerConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// Optimiser state: O(model) for each moment it keeps.
pub struct ServerOptimizer {
    config: ServerOptimizerConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl ServerOptimizer {
    pub fn new(config: ServerOptimizerConfig, params: usize) -> Self {
        let first_moment = !matches!(config, ServerOptimizerConfig::FedAvg { .. });
        let second_moment = first_moment && !matches!(config, ServerOptimizerConfig::FedAvgM { .. });
        let tau2 = match config {
            ServerOptimizerConfig::FedAvg { .. } | ServerOptimizerConfig::FedAvgM { .. } => 0.0,
            ServerOptimizerConfig::FedAdagrad { tau, .. }
            | ServerOptimizerConfig::FedAdam { tau, .. }
            | ServerOptimizerConfig::FedYogi { tau, .. } => tau * tau,
        };
        Self {
            config,
            m: if first_moment { vec![0.0; params] } else { Vec::new() },
            // v starts at τ² as in the paper's Algorithm 2.
            v: if second_moment { vec![tau2; params] } else { Vec::new() },
        }
    }

    /// The moments to persist with a committed model; `None` for plain FedAvg, which keeps none.
    pub fn state(&self) -> Option<ServerOptimizerState> {
        (!self.m.is_empty() || !self.v.is_empty()).then(|| ServerOptimizerState {
            config: self.config,
            m: self.m.clone(),
            v: self.v.clone(),
        })
    }

    /// Continues from saved moments. They must be of the same optimiser (its settings may have
    /// changed: an lr or β applies to the moments as they are) and of the model's size.
    pub fn resume(config: ServerOptimizerConfig, params: usize, saved: ServerOptimizerState) -> Result<Self, String> {
        if std::mem::discriminant(&config) != std::mem::discriminant(&saved.config) {
            return Err(format!(
                "the saved moments are of {:?}, the policy runs {config:?}",
                saved.config
            ));
        }
        let fresh = Self::new(config, params);
        if saved.m.len() != fresh.m.len() || saved.v.len() != fresh.v.len() {
            return Err(format!(
                "the saved moments have {} + {} values, the model needs {} + {}",
                saved.m.len(),
                saved.v.len(),
                fresh.m.len(),
                fresh.v.len()
            ));
        }
        Ok(Self {
            config,
            m: saved.m,
            v: saved.v,
        })
    }

    /// Applies one round's aggregate `delta` to the global `params`.
    pub fn step(&mut self, params: &mut [f32], delta: &[f32]) {
        match self.config {
            ServerOptimizerConfig::FedAvg { lr } => {
                for (p, d) in params.iter_mut().zip(delta) {
                    *p += lr * d;
                }
            }
            ServerOptimizerConfig::FedAvgM { lr, momentum, nesterov } => {
                for ((p, m), d) in params.iter_mut().zip(&mut self.m).zip(delta) {
                    *m = momentum * *m + d;
                    *p += lr * if nesterov { momentum * *m + d } else { *m };
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
            converges(ServerOptimizerConfig::FedAvgM {
                lr: 0.5,
                momentum: 0.5,
                nesterov: false
            }) < 1e-4
        );
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

    #[test]
    fn fedavgm_carries_the_previous_aggregates_with_its_momentum() {
        let mut x = [0.0f32, 0.0];
        let mut opt = ServerOptimizer::new(
            ServerOptimizerConfig::FedAvgM {
                lr: 0.5,
                momentum: 0.8,
                nesterov: false,
            },
            2,
        );
        opt.step(&mut x, &[1.0, -2.0]);
        // v = Δ₁, x = 0.5·Δ₁
        assert_eq!(x, [0.5, -1.0]);
        opt.step(&mut x, &[1.0, 0.0]);
        // v = 0.8·(1, −2) + (1, 0) = (1.8, −1.6); x += 0.5·v
        assert!((x[0] - 1.4).abs() < 1e-6 && (x[1] + 1.8).abs() < 1e-6, "{x:?}");
        // With no new aggregate the velocity alone keeps moving the model, decaying by β.
        opt.step(&mut x, &[0.0, 0.0]);
        assert!((x[0] - (1.4 + 0.5 * 0.8 * 1.8)).abs() < 1e-6, "{x:?}");
    }

    #[test]
    fn nesterov_steps_along_the_velocity_it_is_about_to_have() {
        let mut x = [0.0f32, 0.0];
        let config = ServerOptimizerConfig::FedAvgM {
            lr: 0.5,
            momentum: 0.8,
            nesterov: true,
        };
        let mut opt = ServerOptimizer::new(config, 2);
        opt.step(&mut x, &[1.0, -2.0]);
        // v = Δ₁ = (1, −2); x = 0.5·(0.8·v + Δ₁) = 0.5·1.8·Δ₁
        assert!((x[0] - 0.9).abs() < 1e-6 && (x[1] + 1.8).abs() < 1e-6, "{x:?}");
        opt.step(&mut x, &[1.0, 0.0]);
        // v = (1.8, −1.6); x += 0.5·(0.8·v + Δ₂) = 0.5·(2.44, −1.28)
        assert!((x[0] - 2.12).abs() < 1e-6 && (x[1] + 2.44).abs() < 1e-6, "{x:?}");
        assert!(converges(config) < 1e-4);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_key() {
        assert!(ServerOptimizerConfig::default().check().is_ok());
        let err = ServerOptimizerConfig::FedAvgM {
            lr: 1.0,
            momentum: 1.0,
            nesterov: false,
        }
        .check()
        .unwrap_err();
        assert!(err.contains("momentum = 1"), "{err}");
        let err = ServerOptimizerConfig::FedAvg { lr: f32::NAN }.check().unwrap_err();
        assert!(err.contains("lr = NaN"), "{err}");
        let err = ServerOptimizerConfig::FedAdam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.0,
        }
        .check()
        .unwrap_err();
        assert!(err.contains("tau = 0"), "{err}");
    }

    #[test]
    fn an_optimiser_resumed_from_its_state_steps_as_if_never_stopped() {
        let deltas = [[0.3f32, -1.0], [0.7, 0.2], [-0.4, 0.9], [0.1, 0.1]];
        for config in [
            ServerOptimizerConfig::FedAvgM {
                lr: 0.7,
                momentum: 0.9,
                nesterov: false,
            },
            ServerOptimizerConfig::FedAdam {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            },
        ] {
            let mut straight = [1.0f32, 2.0];
            let mut opt = ServerOptimizer::new(config, 2);
            deltas.iter().for_each(|d| opt.step(&mut straight, d));

            let mut resumed = [1.0f32, 2.0];
            let mut first = ServerOptimizer::new(config, 2);
            deltas[..2].iter().for_each(|d| first.step(&mut resumed, d));
            let saved = first.state().expect("moments kept");
            let mut second = ServerOptimizer::resume(config, 2, saved.clone()).unwrap();
            deltas[2..].iter().for_each(|d| second.step(&mut resumed, d));
            assert_eq!(straight, resumed, "{config:?}");

            // Restarting the moments from zero at the same model continues differently, so the
            // comparison above can fail.
            let mut restarted = [1.0f32, 2.0];
            let mut before = ServerOptimizer::new(config, 2);
            deltas[..2].iter().for_each(|d| before.step(&mut restarted, d));
            let mut cold = ServerOptimizer::new(config, 2);
            deltas[2..].iter().for_each(|d| cold.step(&mut restarted, d));
            assert_ne!(straight, restarted, "{config:?}");

            let wrong = ServerOptimizerConfig::FedAvg { lr: 1.0 };
            assert!(
                ServerOptimizer::resume(wrong, 2, saved.clone())
                    .err()
                    .unwrap()
                    .contains("FedAvg")
            );
            assert!(
                ServerOptimizer::resume(config, 3, saved)
                    .err()
                    .unwrap()
                    .contains("model needs")
            );
        }
        assert!(ServerOptimizer::new(ServerOptimizerConfig::default(), 2).state().is_none());
    }

    #[test]
    fn fedavgm_is_spelled_fed_avg_m_in_the_config() {
        #[derive(serde::Deserialize)]
        struct Round {
            optimizer: ServerOptimizerConfig,
        }
        let r: Round = toml::from_str(r#"optimizer = { optimizer = "fed_avg_m", lr = 1.0, momentum = 0.9 }"#).unwrap();
        assert_eq!(
            r.optimizer,
            ServerOptimizerConfig::FedAvgM {
                lr: 1.0,
                momentum: 0.9,
                nesterov: false
            },
            "nesterov is off unless asked for"
        );
        let r: Round =
            toml::from_str(r#"optimizer = { optimizer = "fed_avg_m", lr = 0.7, momentum = 0.9, nesterov = true }"#).unwrap();
        assert_eq!(
            r.optimizer,
            ServerOptimizerConfig::FedAvgM {
                lr: 0.7,
                momentum: 0.9,
                nesterov: true
            }
        );
    }

    #[test]
    fn fedavgm_with_zero_momentum_is_fedavg() {
        let deltas = [[0.3f32, -1.0], [0.7, 0.2], [-0.4, 0.9]];
        let mut a = [1.0f32, 2.0];
        let mut b = a;
        let mut plain = ServerOptimizer::new(ServerOptimizerConfig::FedAvg { lr: 0.7 }, 2);
        let mut heavy = ServerOptimizer::new(
            ServerOptimizerConfig::FedAvgM {
                lr: 0.7,
                momentum: 0.0,
                nesterov: false,
            },
            2,
        );
        for d in &deltas {
            plain.step(&mut a, d);
            heavy.step(&mut b, d);
        }
        assert_eq!(a, b);
    }
}
