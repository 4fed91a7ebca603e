//! A store's AdamW moments by parameter name.
//!
//! burn keys optimiser state by `ParamId`, which is random per model build, so two stores'
//! states only line up by module path, as their parameters do in [`crate::params`]. Naming
//! them is what lets a federation average its stores' moments: every store then steps with one
//! preconditioner estimated from all shoppers, as a single pooled store would, instead of each
//! with a second moment estimated from its own few shoppers and a first moment that still
//! points where its own last round went.
//!
//! burn 0.22 exposes an optimiser's state only as a whole record, so this goes through the
//! record's burnpack bytes (tensors named `{param id}.momentum.moment_1` / `moment_2`, the step
//! count as the scalar `{param id}.momentum.time`). A burn release that renames them makes
//! [`export_moments`] an error, which the tests beside it catch.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::tensor::{DType, Tensor, TensorData};

use crate::ModelError;
use crate::params::export;

/// One parameter's AdamW moments.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamMoments {
    pub name: String,
    pub shape: Vec<usize>,
    /// The first moment (the gradient's running mean).
    pub first: Vec<f32>,
    /// The second moment (the squared gradient's running mean).
    pub second: Vec<f32>,
}

/// An optimiser's moments for every parameter it has stepped, by name, and the step count the
/// bias correction uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NamedMoments {
    pub steps: u64,
    pub params: Vec<ParamMoments>,
}

impl NamedMoments {
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The weighted mean of several optimisers' moments, parameter by parameter (each weight
    /// normalised by the total), and the largest step count (bias correction is then no
    /// stronger than any store's own). Parts must name the same parameters with the same shapes.
    pub fn weighted_mean(parts: &[(f64, &NamedMoments)]) -> Result<NamedMoments, ModelError> {
        let parts: Vec<(f64, &NamedMoments)> = parts.iter().copied().filter(|(w, m)| *w > 0.0 && !m.is_empty()).collect();
        let Some((_, first)) = parts.first() else {
            return Ok(NamedMoments::default());
        };
        let total: f64 = parts.iter().map(|(w, _)| w).sum();
        let mut out = NamedMoments {
            steps: parts.iter().map(|(_, m)| m.steps).max().unwrap_or(0),
            params: first
                .params
                .iter()
                .map(|p| ParamMoments {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    first: vec![0.0; p.first.len()],
                    second: vec![0.0; p.second.len()],
                })
                .collect(),
        };
        for (weight, moments) in &parts {
            if moments.params.len() != out.params.len() {
                return Err(ModelError::Parameter {
                    name: "(moments)".into(),
                    detail: format!("{} parameters against {}", moments.params.len(), out.params.len()),
                });
            }
            let share = (weight / total) as f32;
            for (acc, p) in out.params.iter_mut().zip(&moments.params) {
                if acc.name != p.name
                    || acc.shape != p.shape
                    || p.first.len() != acc.first.len()
                    || p.second.len() != acc.second.len()
                {
                    return Err(ModelError::Parameter {
                        name: p.name.clone(),
                        detail: format!("moments of shape {:?} against {} of {:?}", p.shape, acc.name, acc.shape),
                    });
                }
                acc.first.iter_mut().zip(&p.first).for_each(|(a, x)| *a += share * x);
                acc.second.iter_mut().zip(&p.second).for_each(|(a, x)| *a += share * x);
            }
        }
        Ok(out)
    }
}

/// Every float parameter's id, in traversal order.
#[derive(Default)]
struct Ids(Vec<u64>);

impl ModuleVisitor for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.id.val());
    }
}

/// Path, parameter id and shape of every float parameter, in traversal order (the order of
/// [`export`], whose names are the paths).
fn ids<M: Module>(model: &M) -> Vec<(String, u64, Vec<usize>)> {
    let mut ids = Ids::default();
    model.visit(&mut ids);
    export(model)
        .into_iter()
        .zip(ids.0)
        .map(|(p, id)| (p.name, id, p.shape))
        .collect()
}

fn record_error(detail: impl std::fmt::Display) -> ModelError {
    ModelError::Parameter {
        name: "(optimiser state)".into(),
        detail: detail.to_string(),
    }
}

const FIRST: &str = "momentum.moment_1";
const SECOND: &str = "momentum.moment_2";
const TIME: &str = "momentum.time";
const RANK: &str = "__rank";

/// `optim`'s AdamW moments for the parameters of `model` it has stepped (parameters it never
/// stepped, such as frozen ones, are left out). `optim` must be the optimiser that trained
/// this very `model` value: state is matched by parameter id.
pub fn export_moments<M: Module>(model: &M, optim: &ModuleOptimizer) -> Result<NamedMoments, ModelError> {
    let record = optim.to_record();
    if record.is_empty() {
        return Ok(NamedMoments::default());
    }
    let reader = burn_pack::Reader::from_bytes(record.into_bytes().map_err(record_error)?).map_err(record_error)?;
    let scalars = reader.scalars().clone();
    let mut tensors: BTreeMap<String, TensorData> = BTreeMap::new();
    for tensor in reader.into_tensors().map_err(record_error)? {
        let (name, dtype, shape, _, bytes) = tensor.into_parts().map_err(record_error)?;
        tensors.insert(name, TensorData::from_bytes(bytes, shape, dtype));
    }
    let values = |name: &str, data: TensorData| -> Result<Vec<f32>, ModelError> {
        data.convert::<f32>().try_to_vec::<f32>().map_err(|e| ModelError::Parameter {
            name: name.to_owned(),
            detail: format!("moments: {e:?}"),
        })
    };
    let mut out = NamedMoments::default();
    for (name, id, shape) in ids(model) {
        let (Some(first), Some(second)) = (
            tensors.remove(&format!("{id}.{FIRST}")),
            tensors.remove(&format!("{id}.{SECOND}")),
        ) else {
            continue;
        };
        let steps = scalars
            .get(&format!("{id}.{TIME}"))
            .and_then(|s| u64::try_from(*s).ok())
            .ok_or_else(|| ModelError::Parameter {
                name: name.clone(),
                detail: "optimiser state without a step count".into(),
            })?;
        out.steps = out.steps.max(steps);
        let first = values(&name, first)?;
        let second = values(&name, second)?;
        let len: usize = shape.iter().product();
        if first.len() != len || second.len() != len {
            return Err(ModelError::Parameter {
                name,
                detail: format!("moments of {} and {} values for a tensor of {len}", first.len(), second.len()),
            });
        }
        out.params.push(ParamMoments {
            name,
            shape,
            first,
            second,
        });
    }
    if out.params.is_empty() {
        return Err(record_error(format!(
            "none of the model's parameters found in a record of {} tensors: has burn renamed `{FIRST}`?",
            tensors.len()
        )));
    }
    Ok(out)
}

/// `optim` with its state replaced by `moments` for the parameters of `model` (by name; a
/// parameter the moments do not name starts fresh on its next step). Refuses moments that name
/// a parameter the model lacks, have another shape, or hold NaN, infinity or a negative second
/// moment: a state like that would turn every later step into NaN.
pub fn import_moments<M: Module>(
    model: &M,
    optim: ModuleOptimizer,
    moments: &NamedMoments,
) -> Result<ModuleOptimizer, ModelError> {
    let owned = ids(model);
    let index: BTreeMap<&str, (u64, &[usize])> = owned.iter().map(|(n, id, s)| (n.as_str(), (*id, s.as_slice()))).collect();
    let mut tensors = Vec::with_capacity(2 * moments.params.len());
    let mut writer_scalars: Vec<(String, burn_pack::Scalar)> = Vec::new();
    for p in &moments.params {
        let Some((id, shape)) = index.get(p.name.as_str()) else {
            return Err(ModelError::Parameter {
                name: p.name.clone(),
                detail: "moments for a parameter the model does not have".into(),
            });
        };
        if *shape != p.shape.as_slice() || p.first.len() != p.second.len() || p.first.len() != shape.iter().product::<usize>() {
            return Err(ModelError::Parameter {
                name: p.name.clone(),
                detail: format!("moments of shape {:?} for a tensor of shape {shape:?}", p.shape),
            });
        }
        if p.first.iter().any(|x| !x.is_finite()) || p.second.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(ModelError::Parameter {
                name: p.name.clone(),
                detail: "moments hold NaN, infinity or a negative second moment".into(),
            });
        }
        for (leaf, values) in [(FIRST, &p.first), (SECOND, &p.second)] {
            let data = TensorData::new(values.clone(), p.shape.clone());
            let (bytes, shape, dtype) = data.into_parts();
            debug_assert_eq!(dtype, DType::F32);
            tensors.push(burn_pack::Tensor::new(format!("{id}.{leaf}"), dtype, shape, Some(*id), bytes));
        }
        writer_scalars.push((format!("{id}.{TIME}"), burn_pack::Scalar::from(moments.steps.max(1) as usize)));
        writer_scalars.push((format!("{id}.{RANK}"), burn_pack::Scalar::from(p.shape.len())));
    }
    let mut writer = burn_pack::Writer::new(tensors);
    for (key, value) in writer_scalars {
        writer = writer.with_scalar(&key, value);
    }
    let bytes = writer.into_bytes().map_err(record_error)?;
    let record = OptimizerRecord::from_bytes(bytes).map_err(record_error)?;
    Ok(optim.load_record(record))
}
