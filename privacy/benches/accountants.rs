//! Our RDP and PLD accountants beside Google's `dp_accounting` over the grid of the privacy
//! issue (σ × q × steps at δ = 1e-5), both computed in this run: the reference comes from
//! `bench/dp_reference.sh`, which builds its own venv. Prints the table and writes it into
//! BENCHMARKS.md. Run: `cargo bench -p fedfuse-privacy --bench accountants` (about 3 minutes).
//!
//! Pass criteria (from the issue): RDP within 0.5%, PLD within 2%, and never lower than the
//! reference by more than 0.1%.

#[path = "../../bench/benchmarks_md.rs"]
mod benchmarks_md;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use fedfuse_privacy::{DpEvent, pld, rdp};

struct Row {
    sigma: f64,
    q: f64,
    steps: u64,
    delta: f64,
    eps_rdp: f64,
    eps_pld: f64,
    sec_rdp: f64,
    sec_pld: f64,
}

fn parse(text: &str) -> Vec<Row> {
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let cols = [
        "sigma",
        "q",
        "steps",
        "delta",
        "eps_rdp",
        "eps_pld",
        "seconds_rdp",
        "seconds_pld",
    ]
    .map(col);
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let v = |i: usize| f[cols[i]].parse::<f64>().unwrap();
            Row {
                sigma: v(0),
                q: v(1),
                steps: v(2) as u64,
                delta: v(3),
                eps_rdp: v(4),
                eps_pld: v(5),
                sec_rdp: v(6),
                sec_pld: v(7),
            }
        })
        .collect()
}

/// dp_accounting's underflow rule (see `Pld::grid_epsilon_for_delta`) applied to our PLD.
fn our_grid_epsilon(event: &DpEvent, delta: f64) -> f64 {
    let t = event.terms().unwrap()[0];
    [pld::Neighbour::Remove, pld::Neighbour::Add]
        .into_iter()
        .map(|rel| {
            pld::Pld::subsampled_gaussian(t.noise_multiplier, t.sampling_probability, rel, pld::DEFAULT_INTERVAL)
                .self_compose(t.count)
                .grid_epsilon_for_delta(delta)
        })
        .fold(0.0, f64::max)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Runs the Python reference now; falls back to the committed full-grid CSV if it cannot.
fn reference() -> (Vec<Row>, String, String) {
    let out = std::env::temp_dir().join("fedfuse-dp-reference.csv");
    let status = Command::new("bash")
        .arg(root().join("bench/dp_reference.sh"))
        .arg("--out")
        .arg(&out)
        .status();
    let (path, source) = match status {
        Ok(s) if s.success() => (out, "computed in this run by `bench/dp_reference.sh`".to_string()),
        other => {
            eprintln!("dp_reference.sh failed ({other:?}); using the committed bench/dp_reference_full.csv");
            (
                root().join("bench/dp_reference_full.csv"),
                "**not** rerun (the venv could not be built): committed `bench/dp_reference_full.csv`".to_string(),
            )
        }
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let version = text.lines().next().unwrap_or("").trim_start_matches("# ").to_owned();
    (parse(&text), source, version)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (rows, source, version) = reference();
    let mut table = String::new();
    let (mut worst_rdp, mut worst_pld, mut lowest) = (0f64, 0f64, 0f64);
    let mut failures = 0;
    let mut timing = Vec::new();
    let mut explained_cells = 0;
    for r in &rows {
        let event = DpEvent::dp_sgd(r.sigma, r.q, r.steps);
        let t = Instant::now();
        let ours_rdp = rdp::epsilon(&event, r.delta).unwrap();
        let t_rdp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let ours_pld = pld::epsilon(&event, r.delta).unwrap();
        let t_pld = t.elapsed().as_secs_f64();
        let e_rdp = (ours_rdp - r.eps_rdp) / r.eps_rdp;
        let e_pld = (ours_pld - r.eps_pld) / r.eps_pld;
        worst_rdp = worst_rdp.max(e_rdp.abs());
        worst_pld = worst_pld.max(e_pld.abs());
        lowest = lowest.min(e_rdp).min(e_pld);
        let mut ok = e_rdp.abs() <= 0.005 && e_pld.abs() <= 0.02 && e_rdp >= -0.001 && e_pld >= -0.001;
        let mut verdict = if ok { "ok".to_string() } else { "**FAIL**".to_string() };
        if !ok && r.eps_pld > 700.0 && e_rdp.abs() <= 0.005 && e_pld.abs() <= 0.02 {
            // Above ~745 dp_accounting's e^{-loss} underflows and it returns the grid loss where
            // the mass above reaches δ, an upper bound. Check that this explains the gap: the
            // same rule applied to our PLD must land on its number.
            let grid = our_grid_epsilon(&event, r.delta);
            let explained = ((grid - r.eps_pld) / r.eps_pld).abs() < 0.001;
            if explained {
                ok = true;
                verdict = format!("ok: dp_acc's e^(-loss) underflows; its rule on our PLD gives {grid:.4}");
                explained_cells += 1;
            }
        }
        failures += usize::from(!ok);
        table.push_str(&format!(
            "| {} | {} | {} | {:.4} | {:.4} | {:+.3}% | {:.4} | {:.4} | {:+.3}% | {} |\n",
            r.sigma,
            r.q,
            r.steps,
            r.eps_rdp,
            ours_rdp,
            e_rdp * 100.0,
            r.eps_pld,
            ours_pld,
            e_pld * 100.0,
            verdict
        ));
        if r.steps == 10_000 {
            timing.push((r, t_rdp, t_pld));
        }
        eprintln!(
            "σ={} q={} T={}: rdp {:+.3}% pld {:+.3}%",
            r.sigma,
            r.q,
            r.steps,
            e_rdp * 100.0,
            e_pld * 100.0
        );
    }
    let mut section = format!(
        "## Privacy accountants against dp_accounting\n\n`cargo bench -p fedfuse-privacy --bench accountants`. Reference: {version}, {source}. \
         Poisson-subsampled Gaussian composed `steps` times, ε at δ = 1e-5; dp_accounting's PLD uses a 1e-4 grid except for large \
         q = 1 cells (coarser, recorded in the CSV); ours uses 1e-4 and composes q = 1 exactly.\n\n\
         **{} of {} cells pass** (RDP within 0.5%, PLD within 2%, never more than 0.1% below). Worst |error|: RDP {:.3}%, PLD {:.3}%; \
         most negative error {:+.3}%; {} cell(s) below by more than 0.1% are explained in the table.\n\n\
         | σ | q | steps | ε RDP dp_acc | ε RDP ours | err | ε PLD dp_acc | ε PLD ours | err | |\n|---|---|---|---|---|---|---|---|---|---|\n{table}",
        rows.len() - failures,
        rows.len(),
        worst_rdp * 100.0,
        worst_pld * 100.0,
        lowest * 100.0,
        explained_cells,
    );
    section.push_str("\n### Time for 10,000 steps\n\n| σ | q | RDP dp_acc (s) | RDP ours (s) | PLD dp_acc (s) | PLD ours (s) |\n|---|---|---|---|---|---|\n");
    for (r, t_rdp, t_pld) in timing {
        section.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.3} | {:.3} |\n",
            r.sigma, r.q, r.sec_rdp, t_rdp, r.sec_pld, t_pld
        ));
    }
    println!("{section}");
    benchmarks_md::write_section(&root(), "accountants", &section);
    if failures > 0 {
        eprintln!("{failures} cells outside tolerance");
        std::process::exit(1);
    }
}
