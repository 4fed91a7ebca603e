//! Our accountants against Google's `dp_accounting` 0.6.0, on the fixed subset of reference
//! values committed in `tests/data/dp_accounting_reference.csv` (made by
//! `bench/dp_reference.sh --subset`).
//!
//! The rule that matters most: never report a smaller ε than the reference by more than 0.1%.

use fedfuse_privacy::DpEvent;

pub struct Reference {
    pub sigma: f64,
    pub q: f64,
    pub steps: u64,
    pub delta: f64,
    pub eps_rdp: f64,
    pub eps_pld: f64,
}

pub fn load(text: &str) -> Vec<Reference> {
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (s, q, t, d, r, p) = (
        col("sigma"),
        col("q"),
        col("steps"),
        col("delta"),
        col("eps_rdp"),
        col("eps_pld"),
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Reference {
                sigma: f[s].parse().unwrap(),
                q: f[q].parse().unwrap(),
                steps: f[t].parse().unwrap(),
                delta: f[d].parse().unwrap(),
                eps_rdp: f[r].parse().unwrap(),
                eps_pld: f[p].parse().unwrap(),
            }
        })
        .collect()
}

fn rows() -> Vec<Reference> {
    load(include_str!("data/dp_accounting_reference.csv"))
}

#[test]
fn rdp_matches_dp_accounting_within_half_a_percent() {
    let rows = rows();
    assert!(rows.len() >= 16, "the reference subset is missing rows");
    for r in rows {
        let ours = fedfuse_privacy::rdp::epsilon(&DpEvent::dp_sgd(r.sigma, r.q, r.steps), r.delta).unwrap();
        let rel = (ours - r.eps_rdp) / r.eps_rdp;
        assert!(
            rel.abs() <= 0.005,
            "σ={} q={} T={}: ours {ours}, dp_accounting {} ({:+.4}%)",
            r.sigma,
            r.q,
            r.steps,
            r.eps_rdp,
            rel * 100.0
        );
        assert!(
            rel >= -0.001,
            "under-reports: σ={} q={} T={}: {ours} < {}",
            r.sigma,
            r.q,
            r.steps,
            r.eps_rdp
        );
    }
}

#[test]
fn pld_matches_dp_accounting_within_two_percent() {
    for r in rows() {
        let ours = fedfuse_privacy::pld::epsilon(&DpEvent::dp_sgd(r.sigma, r.q, r.steps), r.delta).unwrap();
        let rel = (ours - r.eps_pld) / r.eps_pld;
        assert!(
            rel.abs() <= 0.02,
            "σ={} q={} T={}: ours {ours}, dp_accounting {} ({:+.4}%)",
            r.sigma,
            r.q,
            r.steps,
            r.eps_pld,
            rel * 100.0
        );
        assert!(
            rel >= -0.001,
            "under-reports: σ={} q={} T={}: {ours} < {}",
            r.sigma,
            r.q,
            r.steps,
            r.eps_pld
        );
    }
}
