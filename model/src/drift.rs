//! Client-drift correction for federated training (SCAFFOLD's control variates, Karimireddy et
//! al. 2020, in the optimiser's step space).
//!
//! A store whose shoppers differ from the federation's walks, over its local steps, towards its
//! own optimum, and the mean of such walks settles away from the federation's. SCAFFOLD moves
//! every local step by η·(c − cᵢ), where cᵢ is the store's own mean update direction and c the
//! federation's: the store keeps learning from its data, while its systematic pull is swapped
//! for the federation's. Here both come from what a store already holds, so nothing more
//! travels: cᵢ from the store's own last round, c from how the global model moved between the
//! two models it was offered. The local optimiser (AdamW) turns gradients into steps, so the
//! correction is added to the steps, where those directions were measured, not to gradients.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use crate::params::NamedParam;

/// A shift added to every parameter after each optimiser step, scaled by that step's learning
/// rate: `w ← w + lr · shift`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepShift {
    by_path: HashMap<String, NamedParam>,
}

impl StepShift {
    /// Named like the model's parameters (`params::export`); a parameter without an entry is
    /// not shifted.
    pub fn new(shift: Vec<NamedParam>) -> Self {
        Self {
            by_path: shift.into_iter().map(|p| (p.name.clone(), p)).collect(),
        }
    }

    /// `module` with `scale · shift` added to its parameters, outside the autodiff graph (ids,
    /// and so the optimiser's moments, kept).
    pub fn apply<M: Module>(&self, module: M, scale: f64) -> M {
        module.map(&mut Shifter {
            shift: self,
            scale,
            path: Vec::new(),
        })
    }
}

/// The shift for a round from the store's last one, flat in the model's parameter order: per
/// unit of learning rate and step, `(global_move − own_move) / (steps · lr)`, where `own_move`
/// is the store's own displacement last round without the correction it applied,
/// `global_move` how far the global model moved over that round, `steps` and `lr` the last
/// round's. `None` when the lengths disagree or the last round took no step.
pub fn shift_from_last_round(global_move: &[f32], own_move: &[f32], steps: usize, learning_rate: f64) -> Option<Vec<f32>> {
    if steps == 0 || learning_rate.is_nan() || learning_rate <= 0.0 || global_move.len() != own_move.len() {
        return None;
    }
    let scale = (1.0 / (steps as f64 * learning_rate)) as f32;
    Some(global_move.iter().zip(own_move).map(|(g, o)| (g - o) * scale).collect())
}

struct Shifter<'a> {
    shift: &'a StepShift,
    scale: f64,
    path: Vec<String>,
}

impl ModuleMapper for Shifter<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(p) = self.shift.by_path.get(&self.path.join(".")) else {
            return param;
        };
        let (id, old, mapper) = param.consume();
        if p.shape != old.dims().to_vec() {
            return Param::from_mapped_value(id, old, mapper);
        }
        let grad = old.is_require_grad();
        let inner = old.inner();
        let shift = Tensor::<D>::from_data(TensorData::new(p.values.clone(), p.shape.clone()), &inner.device());
        let new = Tensor::from_inner(inner + shift.mul_scalar(self.scale));
        Param::from_mapped_value(id, if grad { new.require_grad() } else { new }, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shift_is_the_global_move_less_the_stores_own_per_step_and_unit_rate() {
        let (global, own) = ([1.0, -2.0, 0.5], [3.0, -2.0, 0.0]);
        // (g − o) / (4 · 0.5)
        assert_eq!(shift_from_last_round(&global, &own, 4, 0.5), Some(vec![-1.0, 0.0, 0.25]));
        assert_eq!(shift_from_last_round(&global, &own, 0, 0.5), None);
        assert_eq!(shift_from_last_round(&global, &own, 4, 0.0), None);
        assert_eq!(shift_from_last_round(&global, &own[..2], 4, 0.5), None);
    }
}
