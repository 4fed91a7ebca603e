//! An auditor's independent check of a privacy ledger: verify the chain, recompute every
//! store's ε from the recorded events with both accountants, and compare with what the store
//! claimed and with its budget.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::ledger::{LedgerError, Spend, verify};

/// One store's line in the audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreAudit {
    pub store: String,
    pub releases: usize,
    pub delta: f64,
    /// ε recomputed here from the events.
    pub eps_rdp: f64,
    pub eps_pld: f64,
    /// ε the store wrote in its last entry.
    pub eps_claimed: f64,
    pub epsilon_max: f64,
    pub over_budget: bool,
    /// The store claimed less than the events cost.
    pub under_claimed: bool,
    /// Entries whose event does not match their own release parameters.
    pub inconsistent_entries: Vec<u64>,
}

impl StoreAudit {
    pub fn ok(&self) -> bool {
        !self.over_budget && !self.under_claimed && self.inconsistent_entries.is_empty()
    }
}

/// Audits a ledger file. A broken chain is an error; everything else is in the report.
pub fn audit_ledger(path: &Path) -> Result<Vec<StoreAudit>, LedgerError> {
    let entries = verify(path)?;
    let mut by_store: BTreeMap<&str, Vec<&crate::LedgerEntry>> = BTreeMap::new();
    for e in &entries {
        by_store.entry(e.release.store.as_str()).or_default().push(e);
    }
    let mut out = Vec::new();
    for (store, entries) in by_store {
        let last = entries.last().expect("a store in the map has entries");
        let events: Vec<_> = entries.iter().map(|e| e.event.clone()).collect();
        let spend = Spend::of(&events, last.delta)?;
        let recomputed = spend.claimed();
        let eps_claimed = last.spent_after.claimed();
        out.push(StoreAudit {
            store: store.to_owned(),
            releases: entries.len(),
            delta: last.delta,
            eps_rdp: spend.epsilon_rdp,
            eps_pld: spend.epsilon_pld,
            eps_claimed,
            epsilon_max: last.epsilon_max,
            over_budget: recomputed > last.epsilon_max * (1.0 + 1e-9),
            under_claimed: eps_claimed < recomputed * (1.0 - 1e-6),
            inconsistent_entries: entries
                .iter()
                .filter(|e| e.event != e.release.event())
                .map(|e| e.seq)
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Budget, Mechanism, NoiseMode, PrivacyLedger, PrivacyUnit, Release};

    fn release(store: &str, sigma: f64) -> Release {
        Release {
            store: store.into(),
            round: 0,
            unit: PrivacyUnit::Shopper,
            mechanism: Mechanism::DpSgd,
            noise_mode: NoiseMode::Local,
            noise_multiplier: sigma,
            sampling_probability: 0.01,
            steps: 100,
            clip_norm: 1.0,
        }
    }

    #[test]
    fn an_honest_ledger_audits_clean_and_matches_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = PrivacyLedger::open(&path).unwrap();
        let budget = Budget {
            epsilon_max: 4.0,
            delta: 1e-5,
        };
        for store in ["berlin", "paris", "berlin"] {
            ledger.charge(release(store, 1.0), &budget).unwrap();
        }
        let report = audit_ledger(&path).unwrap();
        assert_eq!(report.len(), 2);
        let berlin = &report[0];
        assert_eq!((berlin.store.as_str(), berlin.releases), ("berlin", 2));
        assert!(berlin.ok(), "{berlin:?}");
        assert!((berlin.eps_claimed - berlin.eps_pld.min(berlin.eps_rdp)).abs() < 1e-12);
        assert!(berlin.eps_pld < berlin.eps_rdp);
    }

    #[test]
    fn a_forged_but_rehashed_ledger_is_caught_by_recomputation() {
        // A store rewrites its history to claim a tiny spend and a small budget, and recomputes
        // the hash chain so it verifies: the recomputed ε exposes both lies.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = PrivacyLedger::open(&path).unwrap();
        let budget = Budget {
            epsilon_max: 10.0,
            delta: 1e-5,
        };
        ledger.charge(release("berlin", 0.8), &budget).unwrap();
        ledger.charge(release("berlin", 0.8), &budget).unwrap();
        let mut forged = ledger.entries().to_vec();
        let mut prev = "0".repeat(64);
        let mut text = String::new();
        for e in &mut forged {
            e.prev_hash = prev.clone();
            e.spent_after.epsilon_rdp = 0.1;
            e.spent_after.epsilon_pld = 0.1;
            e.epsilon_max = 0.5;
            text.push_str(&e.seal());
            text.push('\n');
            prev = e.hash.clone();
        }
        std::fs::write(&path, text).unwrap();
        let report = audit_ledger(&path).unwrap();
        assert!(report[0].under_claimed && report[0].over_budget, "{:?}", report[0]);
        // An event that does not match its own parameters is flagged too.
        let mut e = ledger.entries()[0].clone();
        e.release.noise_multiplier = 9.0;
        e.prev_hash = "0".repeat(64);
        std::fs::write(&path, e.seal() + "\n").unwrap();
        assert_eq!(audit_ledger(&path).unwrap()[0].inconsistent_entries, vec![0]);
    }

    #[test]
    fn a_broken_chain_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = PrivacyLedger::open(&path).unwrap();
        let budget = Budget {
            epsilon_max: 10.0,
            delta: 1e-5,
        };
        ledger.charge(release("berlin", 1.0), &budget).unwrap();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"steps\":100", "\"steps\":10");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(audit_ledger(&path), Err(LedgerError::BrokenChain { line: 1, .. })));
    }
}
