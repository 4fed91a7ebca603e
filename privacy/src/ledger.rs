//! The privacy ledger: every release, appended and fsynced *before* the release happens.
//!
//! One JSON object per line. Each entry carries the BLAKE3 hash of the previous entry and its
//! own hash, so editing, dropping or reordering any line breaks the chain at that line. The
//! hash is taken over the line's bytes as written, with its final field emptied
//! (`…,"hash":""}`), so any language can check it without re-serialising floats. Each entry names its release as a [`DpEvent`], so an auditor can recompute ε
//! from the ledger alone (the `dp_accounting` example, or `dp_accounting` in Python). Stores
//! keep one; the aggregator mirrors theirs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{AccountingError, DpEvent, pld, rdp};

/// Whose contribution a release protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyUnit {
    Shopper,
    Store,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// User-level DP-SGD inside a store.
    DpSgd,
    /// Client-level DP-FedAvg.
    DpFedAvg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseMode {
    Local,
    Central,
}

/// A store's privacy budget: the ε it will never exceed at this δ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub epsilon_max: f64,
    pub delta: f64,
}

/// A release about to happen: `steps` Poisson-sampled Gaussian steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub store: String,
    pub round: u64,
    pub unit: PrivacyUnit,
    pub mechanism: Mechanism,
    pub noise_mode: NoiseMode,
    pub noise_multiplier: f64,
    pub sampling_probability: f64,
    pub steps: u64,
    pub clip_norm: f64,
}

impl Release {
    pub fn event(&self) -> DpEvent {
        DpEvent::dp_sgd(self.noise_multiplier, self.sampling_probability, self.steps)
    }

    fn validate(&self) -> Result<(), LedgerError> {
        let bad = |what: String| Err(LedgerError::Accounting(AccountingError::InvalidParameter(what)));
        if self.store.is_empty() {
            return bad("empty store name".into());
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
            return bad(format!("noise multiplier {}", self.noise_multiplier));
        }
        if !(self.sampling_probability > 0.0 && self.sampling_probability <= 1.0) {
            return bad(format!("sampling probability {}", self.sampling_probability));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad(format!("clip norm {}", self.clip_norm));
        }
        if self.steps == 0 {
            return bad("zero steps".into());
        }
        Ok(())
    }
}

/// ε by both accountants. Both are valid upper bounds, so the smaller one is the claim.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub epsilon_rdp: f64,
    pub epsilon_pld: f64,
}

impl Spend {
    pub fn claimed(&self) -> f64 {
        self.epsilon_rdp.min(self.epsilon_pld)
    }

    /// The ε of a store's whole history of events at `delta`.
    pub fn of(events: &[DpEvent], delta: f64) -> Result<Self, AccountingError> {
        let total = DpEvent::Composed { events: events.to_vec() };
        Ok(Self {
            epsilon_rdp: rdp::epsilon(&total, delta)?,
            epsilon_pld: pld::epsilon(&total, delta)?,
        })
    }
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    pub seq: u64,
    pub prev_hash: String,
    pub unix_ms: u64,
    #[serde(flatten)]
    pub release: Release,
    pub delta: f64,
    pub event: DpEvent,
    /// The store's cumulative ε after this release, as the writer computed it.
    pub spent_after: Spend,
    pub epsilon_max: f64,
    pub hash: String,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_FIELD: &str = ",\"hash\":\"";

/// The hash of a ledger line: BLAKE3 over the line with the hash field's value removed.
/// Returns the hash the line claims and the one its bytes have.
fn line_hashes(line: &str) -> Option<(&str, String)> {
    let at = line.rfind(HASH_FIELD)?;
    let claimed = line[at + HASH_FIELD.len()..].strip_suffix("\"}")?;
    let unhashed = format!("{}{HASH_FIELD}\"}}", &line[..at]);
    Some((claimed, blake3::hash(unhashed.as_bytes()).to_hex().to_string()))
}

impl LedgerEntry {
    /// Serialises the entry with its hash filled in; returns the line (no newline).
    pub(crate) fn seal(&mut self) -> String {
        self.hash = String::new();
        let unhashed = serde_json::to_string(self).expect("an entry serialises");
        let (_, hash) = line_hashes(&unhashed).expect("`hash` is the last field");
        self.hash = hash;
        serde_json::to_string(self).expect("an entry serialises")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: not a ledger entry: {detail}")]
    Corrupt { path: PathBuf, line: usize, detail: String },
    #[error("{path}:{line}: broken chain: {detail}")]
    BrokenChain { path: PathBuf, line: usize, detail: String },
    #[error(
        "store {store:?} refuses to train: this release would bring its ε to {after:.4} (RDP {rdp:.4}, PLD {pld:.4}) at δ = {delta}, over its budget of ε = {epsilon_max}"
    )]
    BudgetExceeded {
        store: String,
        after: f64,
        rdp: f64,
        pld: f64,
        delta: f64,
        epsilon_max: f64,
    },
    #[error(transparent)]
    Accounting(#[from] AccountingError),
}

/// Reads and verifies a ledger: every line parses, every hash matches its content, every entry
/// points at the one before it, and sequence numbers run 0, 1, 2, …
pub fn verify(path: &Path) -> Result<Vec<LedgerEntry>, LedgerError> {
    let io = |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut entries: Vec<LedgerEntry> = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(io)?;
        let broken = |detail: String| LedgerError::BrokenChain {
            path: path.to_owned(),
            line: line_no,
            detail,
        };
        let entry: LedgerEntry = serde_json::from_str(&line).map_err(|e| LedgerError::Corrupt {
            path: path.to_owned(),
            line: line_no,
            detail: e.to_string(),
        })?;
        let (claimed, actual) = line_hashes(&line).ok_or_else(|| broken("the line does not end in its hash field".into()))?;
        if claimed != actual || entry.hash != actual {
            return Err(broken(format!(
                "hash {claimed} does not match the entry's content ({actual}): the entry was altered"
            )));
        }
        let expected_prev = entries.last().map_or(GENESIS, |e| e.hash.as_str());
        if entry.prev_hash != expected_prev {
            return Err(broken(format!(
                "prev_hash {} does not match the previous entry's hash {expected_prev}",
                entry.prev_hash
            )));
        }
        if entry.seq != entries.len() as u64 {
            return Err(broken(format!(
                "sequence number {} where {} was due",
                entry.seq,
                entries.len()
            )));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// An open ledger file, verified on open.
#[derive(Debug)]
pub struct PrivacyLedger {
    path: PathBuf,
    entries: Vec<LedgerEntry>,
}

impl PrivacyLedger {
    /// Opens (or starts) a ledger, refusing one whose chain is broken.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Ok(Self {
            path: path.to_owned(),
            entries: verify(path)?,
        })
    }

    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn events_of(&self, store: &str) -> Vec<DpEvent> {
        self.entries
            .iter()
            .filter(|e| e.release.store == store)
            .map(|e| e.event.clone())
            .collect()
    }

    /// What `store` has spent so far, at `delta`.
    pub fn spent(&self, store: &str, delta: f64) -> Result<Spend, LedgerError> {
        Ok(Spend::of(&self.events_of(store), delta)?)
    }

    /// What `store` would have spent after `release`. Call it before training: a store whose
    /// next round does not fit its budget must not start it.
    pub fn preview(&self, release: &Release, budget: &Budget) -> Result<Spend, LedgerError> {
        release.validate()?;
        let mut events = self.events_of(&release.store);
        events.push(release.event());
        let after = Spend::of(&events, budget.delta)?;
        if after.claimed() > budget.epsilon_max {
            return Err(LedgerError::BudgetExceeded {
                store: release.store.clone(),
                after: after.claimed(),
                rdp: after.epsilon_rdp,
                pld: after.epsilon_pld,
                delta: budget.delta,
                epsilon_max: budget.epsilon_max,
            });
        }
        Ok(after)
    }

    /// Charges `release` to the ledger: checks the budget, then appends the entry and fsyncs
    /// it. Returns only once the entry is durable; only then may the release leave the store.
    pub fn charge(&mut self, release: Release, budget: &Budget) -> Result<LedgerEntry, LedgerError> {
        let spent_after = self.preview(&release, budget)?;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut entry = LedgerEntry {
            seq: self.entries.len() as u64,
            prev_hash: self.entries.last().map_or(GENESIS.to_owned(), |e| e.hash.clone()),
            unix_ms,
            event: release.event(),
            release,
            delta: budget.delta,
            spent_after,
            epsilon_max: budget.epsilon_max,
            hash: String::new(),
        };
        let mut line = entry.seal().into_bytes();
        line.push(b'\n');
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let created = !self.path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(io)?;
        file.write_all(&line).map_err(io)?;
        file.sync_all().map_err(io)?;
        if created && let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.entries.push(entry.clone());
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(store: &str, round: u64) -> Release {
        Release {
            store: store.into(),
            round,
            unit: PrivacyUnit::Shopper,
            mechanism: Mechanism::DpSgd,
            noise_mode: NoiseMode::Local,
            noise_multiplier: 1.0,
            sampling_probability: 0.01,
            steps: 100,
            clip_norm: 1.0,
        }
    }

    const BUDGET: Budget = Budget {
        epsilon_max: 2.0,
        delta: 1e-5,
    };

    #[test]
    fn charges_chain_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = PrivacyLedger::open(&path).unwrap();
        let a = ledger.charge(release("berlin", 1), &BUDGET).unwrap();
        let b = ledger.charge(release("paris", 1), &BUDGET).unwrap();
        let c = ledger.charge(release("berlin", 2), &BUDGET).unwrap();
        assert_eq!((a.seq, b.seq, c.seq), (0, 1, 2));
        assert_eq!(c.prev_hash, b.hash);
        // Berlin's second round costs more than its first; Paris is charged on its own.
        assert!(c.spent_after.claimed() > a.spent_after.claimed());
        assert_eq!(b.spent_after, a.spent_after);
        let again = PrivacyLedger::open(&path).unwrap();
        assert_eq!(again.entries(), ledger.entries());
        assert_eq!(again.spent("berlin", 1e-5).unwrap(), c.spent_after);
    }

    #[test]
    fn the_entry_is_on_disk_when_charge_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = PrivacyLedger::open(&path).unwrap();
        let entry = ledger.charge(release("berlin", 1), &BUDGET).unwrap();
        // A fresh reader (another process, an auditor) sees it immediately.
        let on_disk = verify(&path).unwrap();
        assert_eq!(on_disk, vec![entry]);
    }

    #[test]
    fn a_store_over_budget_refuses_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = PrivacyLedger::open(&path).unwrap();
        let mut rounds = 0;
        let heavy = |round| Release {
            steps: 600,
            ..release("berlin", round)
        };
        let err = loop {
            match ledger.charge(heavy(rounds), &BUDGET) {
                Ok(_) => rounds += 1,
                Err(e) => break e,
            }
            assert!(rounds < 100, "the budget never ran out");
        };
        assert!(rounds >= 1);
        let LedgerError::BudgetExceeded { after, epsilon_max, .. } = &err else {
            panic!("{err}")
        };
        assert!(*after > *epsilon_max);
        assert!(err.to_string().contains("refuses to train"), "{err}");
        let before = std::fs::read(&path).unwrap();
        assert_eq!(verify(&path).unwrap().len(), rounds as usize);
        assert!(ledger.preview(&heavy(99), &BUDGET).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // Another store's budget is its own.
        assert!(ledger.charge(release("paris", 0), &BUDGET).is_ok());
    }

    #[test]
    fn every_kind_of_tampering_breaks_the_chain_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = PrivacyLedger::open(&path).unwrap();
        for r in 0..3 {
            ledger.charge(release("berlin", r), &BUDGET).unwrap();
        }
        let lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
        let check = |lines: &[String], want_line: usize| {
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            match verify(&path) {
                Err(LedgerError::BrokenChain { line, .. }) | Err(LedgerError::Corrupt { line, .. }) => {
                    assert_eq!(line, want_line)
                }
                other => panic!("tampering not detected: {other:?}"),
            }
            assert!(PrivacyLedger::open(&path).is_err());
        };
        // A smaller noise multiplier written into line 2 (cheaper-looking history).
        let mut t = lines.clone();
        t[1] = t[1].replace("\"noise_multiplier\":1.0", "\"noise_multiplier\":5.0");
        check(&t, 2);
        // A dropped entry.
        check(&[lines[0].clone(), lines[2].clone()], 2);
        // Swapped entries.
        check(&[lines[1].clone(), lines[0].clone(), lines[2].clone()], 1);
        // A truncated last line.
        check(&[lines[0].clone(), lines[1].clone(), lines[2][..20].to_owned()], 3);
    }
}
