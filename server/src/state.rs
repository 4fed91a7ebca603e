//! The aggregator's durable state: an embedded database (redb) for rounds, stores and the
//! current model version, and model blobs as files beside it.
//!
//! A commit writes the model blob first (temporary file, fsync, rename, directory fsync), then
//! records it in one database transaction. A crash between the two leaves an unreferenced blob
//! and the previous state, never a database entry pointing at a blob that is not on disk; a
//! restarted aggregator resumes from the last committed round with the same model hash.

use std::path::{Path, PathBuf};

use fedfuse_protocol::msgs::{decode_model_blob, encode_model_blob};
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::aggregate::optimizer::{ServerOptimizerConfig, ServerOptimizerState};
use crate::layout::{ModelLayout, TensorSpec};
use crate::pki::write_atomic;
use crate::selection::ValidatedModel;
use crate::tail_average::{AveragedModel, last_rounds};
use fedfuse_model::param_mean::{ParamMean, ParamMeanError};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ROUNDS: TableDefinition<u64, &[u8]> = TableDefinition::new("rounds");
const STORES: TableDefinition<&str, &[u8]> = TableDefinition::new("stores");
const ROUND_METRICS: TableDefinition<u64, &[u8]> = TableDefinition::new("round_metrics");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt model blob: {detail}")]
    CorruptBlob { path: PathBuf, detail: String },
    #[error("state database: {0}")]
    Corrupt(String),
    #[error("averaging the last models: {0}")]
    TailAverage(#[from] ParamMeanError),
    #[error("model cannot be stored or sent: {0}")]
    Unencodable(String),
}

macro_rules! db {
    ($e:expr) => {
        $e.map_err(|e| StateError::Db(e.into()))
    };
}

/// The last committed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub version: u64,
    pub next_round: u64,
    pub content_hash: [u8; 32],
}

/// The server optimiser's moments committed with a model version, in a blob beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedOptimizer {
    version: u64,
    config: ServerOptimizerConfig,
    content_hash: [u8; 32],
}

/// What the database remembers of a round.
/// What the aggregator knows of a store: its accepted updates and, for DP stores, the spend
/// it reported (the aggregator's mirror of the store's ledger head).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreRecord {
    pub accepted_updates: u64,
    pub last_round: u64,
    pub epsilon_total: Option<f64>,
    pub delta: Option<f64>,
    pub ledger_head: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round_id: u64,
    pub version: u64,
    pub updates: usize,
    pub content_hash: [u8; 32],
    pub unix_ms: u64,
    /// Measurements recorded with the round (fine-tuning's validation gain).
    #[serde(default)]
    pub metrics: Vec<(String, f64)>,
}

pub struct AggregatorState {
    dir: PathBuf,
    db: Database,
}

/// The model as offered: blob bytes, their hash, the layout and the flat parameters.
pub struct ModelSnapshot {
    pub version: u64,
    pub blob: Vec<u8>,
    pub content_hash: [u8; 32],
    pub layout: ModelLayout,
    pub params: Vec<f32>,
}

/// Encodes parameters as a model blob (f32, dense). A layout the wire format cannot carry (a
/// name, rank or size beyond its limits, as an imported safetensors file may have) or
/// parameters of another length are an error.
pub fn encode_model(layout: &ModelLayout, params: &[f32]) -> Result<Vec<u8>, StateError> {
    if params.len() != layout.len() {
        return Err(StateError::Unencodable(format!(
            "{} parameters for a layout of {}",
            params.len(),
            layout.len()
        )));
    }
    let mut offset = 0;
    let tensors = layout
        .tensors()
        .iter()
        .map(|t| {
            let values = &params[offset..offset + t.len()];
            offset += t.len();
            NamedTensor::encode(t.name.clone(), &t.shape, values, UpdateEncoding::Dense(ValueEncoding::F32), 0)
                .map_err(|e| StateError::Unencodable(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(encode_model_blob(&tensors))
}

/// The moments as a two-tensor "model" (`m`, `v`; an empty moment is left out), so they are
/// written and hash-checked like a model blob.
fn moments_as_model(state: &ServerOptimizerState) -> (ModelLayout, Vec<f32>) {
    let mut specs = Vec::new();
    let mut values = Vec::with_capacity(state.m.len() + state.v.len());
    for (name, moment) in [("m", &state.m), ("v", &state.v)] {
        if !moment.is_empty() {
            specs.push(TensorSpec {
                name: name.into(),
                // Beyond u32 the encoder refuses the layout (it holds 2^31 values at most).
                shape: vec![u32::try_from(moment.len()).unwrap_or(u32::MAX)],
            });
            values.extend_from_slice(moment);
        }
    }
    (ModelLayout::new(specs), values)
}

/// Decodes a model blob into its layout and flat parameters.
pub fn decode_model(blob: &[u8]) -> Result<(ModelLayout, Vec<f32>), fedfuse_protocol::DecodeError> {
    let tensors = decode_model_blob(blob)?;
    let mut params = Vec::new();
    let specs = tensors
        .into_iter()
        .map(|(t, values)| {
            params.extend_from_slice(&values);
            TensorSpec {
                name: t.name,
                shape: t.shape,
            }
        })
        .collect();
    Ok((ModelLayout::new(specs), params))
}

impl AggregatorState {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir.join("models")).map_err(io)?;
        let db = db!(Database::create(dir.join("state.redb")))?;
        let w = db!(db.begin_write())?;
        {
            db!(w.open_table(META))?;
            db!(w.open_table(ROUNDS))?;
            db!(w.open_table(STORES))?;
            db!(w.open_table(ROUND_METRICS))?;
        }
        db!(w.commit())?;
        Ok(Self { dir: dir.to_owned(), db })
    }

    fn blob_path(&self, version: u64) -> PathBuf {
        self.dir.join("models").join(format!("v{version:08}.bin"))
    }

    /// The aggregator's own privacy ledger (central DP releases), beside the database.
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("privacy-ledger.jsonl")
    }

    /// One JSON record of the meta table, if it was ever written.
    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        let r = db!(self.db.begin_read())?;
        let t = db!(r.open_table(META))?;
        let Some(v) = db!(t.get(key))? else { return Ok(None) };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StateError::Corrupt(e.to_string()))
    }

    pub fn committed(&self) -> Result<Option<Committed>, StateError> {
        self.meta("committed")
    }

    /// Loads a committed model and checks its hash against the database.
    pub fn load(&self, committed: &Committed) -> Result<ModelSnapshot, StateError> {
        self.load_blob(self.blob_path(committed.version), committed.version, committed.content_hash)
    }

    fn load_blob(&self, path: PathBuf, version: u64, expected: [u8; 32]) -> Result<ModelSnapshot, StateError> {
        let blob = std::fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        let content_hash = fedfuse_protocol::content_hash(&blob);
        if content_hash != expected {
            return Err(StateError::CorruptBlob {
                path,
                detail: "content hash differs from the committed one".into(),
            });
        }
        let (layout, params) = decode_model(&blob).map_err(|e| StateError::CorruptBlob {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Ok(ModelSnapshot {
            version,
            blob,
            content_hash,
            layout,
            params,
        })
    }

    fn optimizer_path(&self, version: u64) -> PathBuf {
        self.dir.join("models").join(format!("v{version:08}.optimizer.bin"))
    }

    /// Makes a model durable and records it; `round_id` 0 records the starting model.
    pub fn commit(
        &self,
        round_id: u64,
        version: u64,
        layout: &ModelLayout,
        params: &[f32],
        updates: usize,
    ) -> Result<ModelSnapshot, StateError> {
        self.commit_with_optimizer(round_id, version, layout, params, updates, None)
    }

    /// As [`Self::commit`], with the server optimiser's moments after the round, in the same
    /// transaction: a resumed aggregator continues with the moments of the model it resumes.
    pub fn commit_with_optimizer(
        &self,
        round_id: u64,
        version: u64,
        layout: &ModelLayout,
        params: &[f32],
        updates: usize,
        optimizer: Option<&ServerOptimizerState>,
    ) -> Result<ModelSnapshot, StateError> {
        let blob = encode_model(layout, params)?;
        let content_hash = fedfuse_protocol::content_hash(&blob);
        write_atomic(&self.blob_path(version), &blob, 0o644)?;
        let saved = match optimizer {
            Some(state) => {
                let (moments_layout, values) = moments_as_model(state);
                let moments = encode_model(&moments_layout, &values)?;
                write_atomic(&self.optimizer_path(version), &moments, 0o600)?;
                Some(SavedOptimizer {
                    version,
                    config: state.config,
                    content_hash: fedfuse_protocol::content_hash(&moments),
                })
            }
            None => None,
        };
        let committed = Committed {
            version,
            next_round: round_id + 1,
            content_hash,
        };
        let record = RoundRecord {
            round_id,
            version,
            updates,
            content_hash,
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            metrics: Vec::new(),
        };
        // Only the moments of the last committed version are ever read back.
        let superseded = self.meta::<SavedOptimizer>("optimizer")?.filter(|p| p.version != version);
        let w = db!(self.db.begin_write())?;
        {
            let mut meta = db!(w.open_table(META))?;
            db!(meta.insert("committed", serde_json::to_vec(&committed).expect("serialises").as_slice()))?;
            match &saved {
                Some(saved) => {
                    db!(meta.insert("optimizer", serde_json::to_vec(saved).expect("serialises").as_slice()))?;
                }
                None => {
                    db!(meta.remove("optimizer"))?;
                }
            }
            let mut rounds = db!(w.open_table(ROUNDS))?;
            db!(rounds.insert(round_id, serde_json::to_vec(&record).expect("serialises").as_slice()))?;
        }
        db!(w.commit())?;
        if let Some(old) = superseded {
            // The database no longer points at it; a file left by a failed removal is harmless.
            let _ = std::fs::remove_file(self.optimizer_path(old.version));
        }
        Ok(ModelSnapshot {
            version,
            blob,
            content_hash,
            layout: layout.clone(),
            params: params.to_vec(),
        })
    }

    /// The server optimiser's moments committed with `committed`, checked against their hash;
    /// `None` when that version was committed without any (plain FedAvg, or an older state).
    pub fn load_optimizer(&self, committed: &Committed) -> Result<Option<ServerOptimizerState>, StateError> {
        let Some(saved) = self.meta::<SavedOptimizer>("optimizer")? else {
            return Ok(None);
        };
        if saved.version != committed.version {
            return Ok(None);
        }
        let path = self.optimizer_path(saved.version);
        let snapshot = self.load_blob(path.clone(), saved.version, saved.content_hash)?;
        let take = |name: &str| {
            snapshot.layout.find(name).map_or(Vec::new(), |(index, offset)| {
                snapshot.params[offset..offset + snapshot.layout.tensors()[index].len()].to_vec()
            })
        };
        Ok(Some(ServerOptimizerState {
            config: saved.config,
            m: take("m"),
            v: take("v"),
        }))
    }

    /// Records an accepted update and the privacy spend it reported.
    pub fn record_update(
        &self,
        store: &str,
        round_id: u64,
        spend: Option<&fedfuse_protocol::msgs::PrivacySpend>,
    ) -> Result<(), StateError> {
        let w = db!(self.db.begin_write())?;
        {
            let mut t = db!(w.open_table(STORES))?;
            let mut record: StoreRecord = match db!(t.get(store))? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| StateError::Corrupt(e.to_string()))?,
                None => StoreRecord::default(),
            };
            record.accepted_updates += 1;
            record.last_round = round_id;
            if let Some(s) = spend {
                record.epsilon_total = Some(s.epsilon_total);
                record.delta = Some(s.delta);
                record.ledger_head = Some(s.ledger_entry_hash.iter().map(|b| format!("{b:02x}")).collect());
            }
            db!(t.insert(store, serde_json::to_vec(&record).expect("serialises").as_slice()))?;
        }
        db!(w.commit())?;
        Ok(())
    }

    /// Adds `metrics` to round `round_id`'s record, replacing any of the same name (the
    /// round may commit later: the metrics wait in their own entry until then).
    pub fn record_round_metrics(&self, round_id: u64, metrics: &[(String, f64)]) -> Result<(), StateError> {
        let w = db!(self.db.begin_write())?;
        merge_round_metrics(&w, round_id, metrics)?;
        db!(w.commit())?;
        Ok(())
    }

    /// Records the stores' pooled validation of a model version with the round that measured
    /// it, and makes it the model to serve if it beats the best so far (in one transaction, so
    /// a crash leaves either both or neither). Returns whether it became the best.
    pub fn record_validation(&self, validated: &ValidatedModel) -> Result<bool, StateError> {
        let best = self.best_validated()?;
        let better = best.as_ref().is_none_or(|b| validated.better_than(b));
        let w = db!(self.db.begin_write())?;
        if better {
            let mut meta = db!(w.open_table(META))?;
            db!(meta.insert(
                "best_validated",
                serde_json::to_vec(validated).expect("serialises").as_slice()
            ))?;
        }
        merge_round_metrics(&w, validated.round_id, &validated.round_metrics())?;
        db!(w.commit())?;
        Ok(better)
    }

    /// The version the stores' validation shoppers ranked best so far, if any reported.
    pub fn best_validated(&self) -> Result<Option<ValidatedModel>, StateError> {
        self.meta("best_validated")
    }

    /// Loads a validated version's blob, checked against the hash it was validated with.
    pub fn load_validated(&self, validated: &ValidatedModel) -> Result<ModelSnapshot, StateError> {
        self.load(&Committed {
            version: validated.version,
            next_round: validated.round_id,
            content_hash: validated.content_hash,
        })
    }

    fn average_blob_path(&self, averaged: &AveragedModel) -> PathBuf {
        self.dir.join("models").join(format!(
            "average-v{:08}-last{}.bin",
            averaged.last_version(),
            averaged.versions.len()
        ))
    }

    /// The average of the last `k` trained models committed (fewer when fewer exist; `None`
    /// when none has been trained yet), each blob read once and checked against its hash.
    /// The snapshot's `version` is the newest one averaged. Nothing is written.
    pub fn average_of_last(&self, k: usize) -> Result<Option<(AveragedModel, ModelSnapshot)>, StateError> {
        let records = self.rounds()?;
        let ids: Vec<u64> = records.iter().map(|r| r.round_id).collect();
        let chosen = last_rounds(&ids, k);
        let mut sum = ParamMean::default();
        let mut layout: Option<ModelLayout> = None;
        let mut averaged = AveragedModel {
            versions: Vec::with_capacity(chosen.len()),
            rounds: chosen.clone(),
            content_hash: [0; 32],
        };
        for round in &chosen {
            let r = records
                .iter()
                .find(|r| r.round_id == *round)
                .ok_or_else(|| StateError::Corrupt(format!("round {round} vanished while averaging")))?;
            let model = self.load(&Committed {
                version: r.version,
                next_round: r.round_id + 1,
                content_hash: r.content_hash,
            })?;
            match &layout {
                Some(l) if *l != model.layout => {
                    return Err(StateError::Corrupt(format!(
                        "version {} has another layout than version {}",
                        model.version, averaged.versions[0]
                    )));
                }
                Some(_) => {}
                None => layout = Some(model.layout.clone()),
            }
            sum.add(&model.params)?;
            averaged.versions.push(model.version);
        }
        let Some(layout) = layout else { return Ok(None) };
        let params = sum.finish()?;
        let blob = encode_model(&layout, &params)?;
        averaged.content_hash = fedfuse_protocol::content_hash(&blob);
        let snapshot = ModelSnapshot {
            version: averaged.last_version(),
            blob,
            content_hash: averaged.content_hash,
            layout,
            params,
        };
        Ok(Some((averaged, snapshot)))
    }

    /// Averages the last `k` trained models and makes that the averaged model to serve:
    /// its blob is written atomically under a name of its own, then recorded with its hash in
    /// one transaction, so a crash leaves the previous average servable; the previous blob is
    /// removed afterwards.
    pub fn commit_average_of_last(&self, k: usize) -> Result<Option<AveragedModel>, StateError> {
        let Some((averaged, snapshot)) = self.average_of_last(k)? else {
            return Ok(None);
        };
        let previous = self.tail_average()?;
        let path = self.average_blob_path(&averaged);
        write_atomic(&path, &snapshot.blob, 0o644)?;
        let w = db!(self.db.begin_write())?;
        {
            let mut meta = db!(w.open_table(META))?;
            db!(meta.insert("tail_average", serde_json::to_vec(&averaged).expect("serialises").as_slice()))?;
        }
        db!(w.commit())?;
        if let Some(old) = previous {
            let old_path = self.average_blob_path(&old);
            if old_path != path {
                let _ = std::fs::remove_file(old_path);
            }
        }
        Ok(Some(averaged))
    }

    /// The averaged model recorded last by [`Self::commit_average_of_last`], if any.
    pub fn tail_average(&self) -> Result<Option<AveragedModel>, StateError> {
        self.meta("tail_average")
    }

    /// Loads the averaged model's blob, checked against its recorded hash.
    pub fn load_tail_average(&self, averaged: &AveragedModel) -> Result<ModelSnapshot, StateError> {
        self.load_blob(
            self.average_blob_path(averaged),
            averaged.last_version(),
            averaged.content_hash,
        )
    }

    pub fn stores(&self) -> Result<Vec<(String, StoreRecord)>, StateError> {
        let r = db!(self.db.begin_read())?;
        let t = db!(r.open_table(STORES))?;
        let mut out = Vec::new();
        for item in db!(t.iter())? {
            let (k, v) = db!(item)?;
            out.push((
                k.value().to_owned(),
                serde_json::from_slice(v.value()).map_err(|e| StateError::Corrupt(e.to_string()))?,
            ));
        }
        Ok(out)
    }

    pub fn rounds(&self) -> Result<Vec<RoundRecord>, StateError> {
        let r = db!(self.db.begin_read())?;
        let t = db!(r.open_table(ROUNDS))?;
        let mut out = Vec::new();
        for item in db!(t.iter())? {
            let (_, v) = db!(item)?;
            out.push(serde_json::from_slice::<RoundRecord>(v.value()).map_err(|e| StateError::Corrupt(e.to_string()))?);
        }
        let m = db!(r.open_table(ROUND_METRICS))?;
        for record in &mut out {
            if let Some(v) = db!(m.get(record.round_id))? {
                record.metrics = serde_json::from_slice(v.value()).map_err(|e| StateError::Corrupt(e.to_string()))?;
            }
        }
        Ok(out)
    }
}

fn merge_round_metrics(w: &redb::WriteTransaction, round_id: u64, metrics: &[(String, f64)]) -> Result<(), StateError> {
    let mut t = db!(w.open_table(ROUND_METRICS))?;
    let mut merged: Vec<(String, f64)> = match db!(t.get(round_id))? {
        Some(v) => serde_json::from_slice(v.value()).map_err(|e| StateError::Corrupt(e.to_string()))?,
        None => Vec::new(),
    };
    for (name, value) in metrics {
        match merged.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = *value,
            None => merged.push((name.clone(), *value)),
        }
    }
    db!(t.insert(round_id, serde_json::to_vec(&merged).expect("serialises").as_slice()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ModelLayout {
        ModelLayout::new(vec![TensorSpec {
            name: "w".into(),
            shape: vec![3],
        }])
    }

    #[test]
    fn the_server_optimisers_moments_reload_with_the_version_they_were_committed_with() {
        let dir = tempfile::tempdir().unwrap();
        let moments = ServerOptimizerState {
            config: ServerOptimizerConfig::FedAvgM {
                lr: 1.0,
                momentum: 0.9,
                nesterov: false,
            },
            m: vec![0.25, -1.5, 3.0],
            v: Vec::new(),
        };
        {
            let s = AggregatorState::open(dir.path()).unwrap();
            s.commit(0, 0, &layout(), &[0.0; 3], 0).unwrap();
            s.commit_with_optimizer(1, 1, &layout(), &[1.0; 3], 2, Some(&moments))
                .unwrap();
        }
        let s = AggregatorState::open(dir.path()).unwrap();
        let c = s.committed().unwrap().unwrap();
        assert_eq!(s.load_optimizer(&c).unwrap(), Some(moments.clone()));
        // Moments are of the version they were saved with, never of an older or newer one.
        let older = Committed { version: 0, ..c.clone() };
        assert_eq!(s.load_optimizer(&older).unwrap(), None);
        // A later commit replaces them and removes the superseded file.
        let moved = ServerOptimizerState {
            m: vec![1.0, 1.0, 1.0],
            ..moments.clone()
        };
        s.commit_with_optimizer(2, 2, &layout(), &[2.0; 3], 2, Some(&moved)).unwrap();
        assert_eq!(s.load_optimizer(&s.committed().unwrap().unwrap()).unwrap(), Some(moved));
        let models = dir.path().join("models");
        assert!(!models.join("v00000001.optimizer.bin").exists());
        // A commit without moments (the policy switched to plain FedAvg) drops them.
        s.commit(3, 3, &layout(), &[3.0; 3], 2).unwrap();
        assert_eq!(s.load_optimizer(&s.committed().unwrap().unwrap()).unwrap(), None);
        assert!(!models.join("v00000002.optimizer.bin").exists());

        // A damaged moments file is an error naming it, not zero moments.
        let s2 = {
            let d = tempfile::tempdir().unwrap();
            let s = AggregatorState::open(d.path()).unwrap();
            s.commit_with_optimizer(1, 1, &layout(), &[1.0; 3], 2, Some(&moments))
                .unwrap();
            let path = d.path().join("models").join("v00000001.optimizer.bin");
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            let err = s.load_optimizer(&s.committed().unwrap().unwrap()).unwrap_err();
            assert!(err.to_string().contains("v00000001.optimizer.bin"), "{err}");
            d
        };
        drop(s2);
    }

    #[test]
    fn commits_survive_reopening_with_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let a = {
            let s = AggregatorState::open(dir.path()).unwrap();
            assert_eq!(s.committed().unwrap(), None);
            s.commit(0, 0, &layout(), &[0.0; 3], 0).unwrap();
            s.commit(1, 1, &layout(), &[1.0, 2.0, 3.0], 3).unwrap()
        };
        let s = AggregatorState::open(dir.path()).unwrap();
        let c = s.committed().unwrap().unwrap();
        assert_eq!((c.version, c.next_round, c.content_hash), (1, 2, a.content_hash));
        let m = s.load(&c).unwrap();
        assert_eq!(m.params, vec![1.0, 2.0, 3.0]);
        assert_eq!(m.layout, layout());
        assert_eq!(s.rounds().unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_blob_is_refused_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = AggregatorState::open(dir.path()).unwrap();
        s.commit(0, 0, &layout(), &[0.5; 3], 0).unwrap();
        let path = dir.path().join("models/v00000000.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            s.load(&s.committed().unwrap().unwrap()),
            Err(StateError::CorruptBlob { .. })
        ));
    }

    #[test]
    fn the_average_of_the_last_models_is_committed_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = AggregatorState::open(dir.path()).unwrap();
            assert!(s.average_of_last(3).unwrap().is_none());
            s.commit(0, 0, &layout(), &[100.0; 3], 0).unwrap();
            // Only the untrained start: nothing to average.
            assert_eq!(s.commit_average_of_last(3).unwrap(), None);
            s.commit(1, 1, &layout(), &[1.0, 2.0, 3.0], 2).unwrap();
            s.commit(2, 2, &layout(), &[3.0, 2.0, 1.0], 2).unwrap();
            let first = s.commit_average_of_last(3).unwrap().unwrap();
            // Two trained rounds, and the start (round 0) is not among them.
            assert_eq!((first.versions.clone(), first.rounds.clone()), (vec![1, 2], vec![1, 2]));
            assert_eq!(s.load_tail_average(&first).unwrap().params, vec![2.0; 3]);
            s.commit(3, 3, &layout(), &[5.0, 5.0, 5.0], 2).unwrap();
            s.commit(4, 4, &layout(), &[8.0, 2.0, 5.0], 2).unwrap();
            let second = s.commit_average_of_last(3).unwrap().unwrap();
            assert_eq!(second.versions, vec![2, 3, 4]);
            // The superseded average's blob is gone; only the recorded one remains.
            assert!(matches!(s.load_tail_average(&first), Err(StateError::Io { .. })));
        }
        let s = AggregatorState::open(dir.path()).unwrap();
        let averaged = s.tail_average().unwrap().unwrap();
        let model = s.load_tail_average(&averaged).unwrap();
        assert_eq!(model.params, vec![16.0 / 3.0, 3.0, 11.0 / 3.0]);
        assert_eq!((model.version, model.layout), (4, layout()));
        assert_eq!(model.content_hash, averaged.content_hash);
        // Computing without committing gives the same model, and k = 1 is the last model.
        let (again, snapshot) = s.average_of_last(3).unwrap().unwrap();
        assert_eq!((again, snapshot.blob), (averaged.clone(), model.blob));
        assert_eq!(s.average_of_last(1).unwrap().unwrap().1.params, vec![8.0, 2.0, 5.0]);
        // A damaged averaged blob is refused, not served.
        let path = dir.path().join("models/average-v00000004-last3.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(s.load_tail_average(&averaged), Err(StateError::CorruptBlob { .. })));
    }

    #[test]
    fn the_best_validated_version_is_kept_across_reopening_and_loads_by_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let validated = |version: u64, hash: [u8; 32], hr10: f64| ValidatedModel {
            version,
            content_hash: hash,
            round_id: version + 1,
            hr10,
            ndcg10: hr10 / 2.0,
            shoppers: 40,
            stores: 2,
        };
        {
            let s = AggregatorState::open(dir.path()).unwrap();
            let v1 = s.commit(1, 1, &layout(), &[1.0; 3], 2).unwrap();
            let v2 = s.commit(2, 2, &layout(), &[2.0; 3], 2).unwrap();
            s.commit(3, 3, &layout(), &[3.0; 3], 2).unwrap();
            s.record_round_metrics(2, &[("fine_tune_kept".into(), 1.0)]).unwrap();
            assert!(s.record_validation(&validated(1, v1.content_hash, 0.20)).unwrap());
            assert!(s.record_validation(&validated(2, v2.content_hash, 0.25)).unwrap());
            assert!(!s.record_validation(&validated(3, [9; 32], 0.22)).unwrap());
        }
        let s = AggregatorState::open(dir.path()).unwrap();
        let best = s.best_validated().unwrap().unwrap();
        assert_eq!((best.version, best.hr10), (2, 0.25));
        assert_eq!(s.load_validated(&best).unwrap().params, vec![2.0; 3]);
        // Round 3 measured version 2; the metrics merge with what the round held already.
        let rounds = s.rounds().unwrap();
        let round2 = &rounds.iter().find(|r| r.round_id == 2).unwrap().metrics;
        assert!(round2.contains(&("fine_tune_kept".into(), 1.0)));
        assert!(round2.contains(&("federated_validation_hr10".into(), 0.20)));
        let round3 = &rounds.iter().find(|r| r.round_id == 3).unwrap().metrics;
        assert!(round3.contains(&("federated_validation_version".into(), 2.0)));
        // A validated hash that does not match the blob is refused, not served.
        assert!(matches!(
            s.load_validated(&validated(1, [7; 32], 0.3)),
            Err(StateError::CorruptBlob { .. })
        ));
    }
}
