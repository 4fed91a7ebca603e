//! The model as named f32 tensors: what a store sends (as a delta) and what the aggregator
//! averages. Names are module paths ("items.id.weight"): burn's `ParamId`s are random per
//! build, so two stores' models only agree on paths.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::ModelError;

/// One parameter tensor by name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedParam {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

#[derive(Default)]
struct Export {
    path: Vec<String>,
    out: Vec<NamedParam>,
}

impl ModuleVisitor for Export {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let values = t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
        self.out.push(NamedParam {
            name: self.path.join("."),
            shape,
            values,
        });
    }
}

/// Whether the parameter at `path` is one `prefixes` select (a plan's or fine-tuning's list
/// of path prefixes, as in `"head_"` or `"sequence."`); an empty list selects every parameter.
pub fn selected(path: &str, prefixes: &[String]) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| path.starts_with(p.as_str()))
}

/// Every float parameter of `module`, in traversal order.
pub fn export<M: Module>(module: &M) -> Vec<NamedParam> {
    let mut e = Export::default();
    module.visit(&mut e);
    e.out
}

/// Cuts one flat vector (tensors end to end, in the given order) back into named tensors: the
/// inverse of concatenating `export`'s values, as models travel and are stored.
pub fn unflatten(shapes: &[(String, Vec<usize>)], flat: &[f32]) -> Result<Vec<NamedParam>, ModelError> {
    let total: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    if total != flat.len() {
        return Err(ModelError::Parameter {
            name: "(all)".into(),
            detail: format!("{} values for tensors holding {total}", flat.len()),
        });
    }
    let mut offset = 0;
    Ok(shapes
        .iter()
        .map(|(name, shape)| {
            let len = shape.iter().product::<usize>();
            let values = flat[offset..offset + len].to_vec();
            offset += len;
            NamedParam {
                name: name.clone(),
                shape: shape.clone(),
                values,
            }
        })
        .collect())
}

struct Import<'a> {
    path: Vec<String>,
    src: &'a BTreeMap<String, &'a NamedParam>,
    error: Option<ModelError>,
    used: usize,
}

impl ModuleMapper for Import<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let (id, old, mapper) = param.consume();
        let Some(p) = self.src.get(&name) else {
            self.error.get_or_insert(ModelError::Parameter {
                name,
                detail: "missing".into(),
            });
            return Param::from_mapped_value(id, old, mapper);
        };
        if p.shape != old.dims().to_vec() || p.values.len() != p.shape.iter().product::<usize>() {
            self.error.get_or_insert(ModelError::Parameter {
                name,
                detail: format!("shape {:?}, expected {:?}", p.shape, old.dims()),
            });
            return Param::from_mapped_value(id, old, mapper);
        }
        self.used += 1;
        let grad = old.is_require_grad();
        let new = Tensor::<D>::from_data(TensorData::new(p.values.clone(), p.shape.clone()), &old.device());
        // The ParamId is kept, so optimiser state keyed by it survives a load.
        Param::from_mapped_value(id, if grad { new.require_grad() } else { new }, mapper)
    }
}

/// Loads named parameters into `module`; every parameter must be given, with its shape, and
/// nothing else may be.
pub fn import<M: Module>(module: M, params: &[NamedParam]) -> Result<M, ModelError> {
    let src: BTreeMap<String, &NamedParam> = params.iter().map(|p| (p.name.clone(), p)).collect();
    let mut import = Import {
        path: Vec::new(),
        src: &src,
        error: None,
        used: 0,
    };
    let module = module.map(&mut import);
    if let Some(e) = import.error {
        return Err(e);
    }
    if import.used != src.len() {
        let known: Vec<String> = export(&module).into_iter().map(|p| p.name).collect();
        let extra = src.keys().find(|k| !known.contains(k)).cloned().unwrap_or_default();
        return Err(ModelError::Parameter {
            name: extra,
            detail: "not a parameter of this model".into(),
        });
    }
    Ok(module)
}
