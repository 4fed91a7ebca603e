//! The privacy auditor: recompute (ε, δ) from a ledger, plan noise, or tabulate ε.
//!
//! Builds without the GPU or network stack:
//!   cargo run --release --no-default-features --example dp_accounting -- --ledger store.ledger.jsonl
//!
//! Exit status: 0 when everything checks out; 1 when a store is over budget, under-claims its
//! spend, or records an event that contradicts its own parameters; 2 when the ledger's chain is
//! broken or it cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use fedfuse_privacy::audit::audit_ledger;
use fedfuse_privacy::plan::{Accountant, noise_multiplier_for};
use fedfuse_privacy::{DpEvent, pld, rdp};
use serde_json::json;

/// Independent differential-privacy accounting for fedfuse.
///
/// Replays a privacy ledger and recomputes each store's ε with two accountants: Rényi DP
/// (Mironov et al. 2019, with the conversion of Canonne et al. 2020) and the tighter privacy
/// loss distribution (Doroshenko et al. 2022). Both bound the Poisson-subsampled Gaussian that
/// DP-SGD and DP-FedAvg release.
#[derive(Parser)]
#[command(group(ArgGroup::new("mode").required(true).args(["ledger", "plan", "epsilon", "sweep"])))]
struct Cli {
    /// Verify the ledger's hash chain and recompute every store's ε.
    #[arg(long, value_name = "FILE")]
    ledger: Option<PathBuf>,
    /// Print the noise multiplier σ that meets --target-eps (needs --delta, --q, --steps).
    #[arg(long)]
    plan: bool,
    /// Print ε for one setting (needs --sigma, --q, --steps, --delta).
    #[arg(long)]
    epsilon: bool,
    /// Print ε over a grid of σ and q for each of --steps (default 100 and 1000).
    #[arg(long)]
    sweep: bool,
    #[arg(long, value_name = "E")]
    target_eps: Option<f64>,
    /// δ of the (ε, δ) guarantee.
    #[arg(long, value_name = "D", default_value_t = 1e-5)]
    delta: f64,
    /// Poisson sampling rate per step (1 = full batch).
    #[arg(long, value_name = "Q")]
    q: Option<f64>,
    /// Number of steps (repeatable with --sweep).
    #[arg(long, value_name = "T")]
    steps: Vec<u64>,
    /// Noise multiplier: noise std / clip norm.
    #[arg(long, value_name = "S")]
    sigma: Option<f64>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

fn need<T>(value: Option<T>, flag: &str) -> anyhow::Result<T> {
    value.ok_or_else(|| anyhow::anyhow!("{flag} is required in this mode"))
}

fn one_step_count(cli: &Cli) -> anyhow::Result<u64> {
    match cli.steps.as_slice() {
        [t] => Ok(*t),
        _ => anyhow::bail!("--steps is required once in this mode"),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(path) = &cli.ledger {
        let report = audit_ledger(path)?;
        let failed = report.iter().filter(|s| !s.ok()).count();
        if cli.json {
            for s in &report {
                println!("{}", serde_json::to_string(&json!({"ok": s.ok(), "audit": s}))?);
            }
        } else {
            println!("ledger {}: chain verified, {} store(s)", path.display(), report.len());
            println!(
                "{:<16} {:>8} {:>9} {:>10} {:>10} {:>10} {:>8}  verdict",
                "store", "releases", "delta", "eps_rdp", "eps_pld", "claimed", "budget"
            );
            for s in &report {
                let mut verdict = Vec::new();
                if s.over_budget {
                    verdict.push("OVER BUDGET".to_string());
                }
                if s.under_claimed {
                    verdict.push("UNDER-CLAIMED".to_string());
                }
                if !s.inconsistent_entries.is_empty() {
                    verdict.push(format!("inconsistent entries {:?}", s.inconsistent_entries));
                }
                let verdict = if verdict.is_empty() {
                    "ok".to_string()
                } else {
                    verdict.join(", ")
                };
                println!(
                    "{:<16} {:>8} {:>9.1e} {:>10.4} {:>10.4} {:>10.4} {:>8.3}  {verdict}",
                    s.store, s.releases, s.delta, s.eps_rdp, s.eps_pld, s.eps_claimed, s.epsilon_max
                );
            }
        }
        return Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    if cli.plan {
        let target = need(cli.target_eps, "--target-eps")?;
        let q = need(cli.q, "--q")?;
        let steps = one_step_count(&cli)?;
        let sigma_rdp = noise_multiplier_for(target, cli.delta, q, steps, Accountant::Rdp)?;
        let sigma_pld = noise_multiplier_for(target, cli.delta, q, steps, Accountant::Pld)?;
        if cli.json {
            println!(
                "{}",
                json!({"target_eps": target, "delta": cli.delta, "q": q, "steps": steps, "sigma_rdp": sigma_rdp, "sigma_pld": sigma_pld})
            );
        } else {
            println!("for ε ≤ {target} at δ = {} with q = {q} over {steps} steps:", cli.delta);
            println!(
                "  σ (RDP) = {sigma_rdp:.4}\n  σ (PLD) = {sigma_pld:.4}   (tighter accounting: less noise for the same guarantee)"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if cli.epsilon {
        let sigma = need(cli.sigma, "--sigma")?;
        let q = need(cli.q, "--q")?;
        let steps = one_step_count(&cli)?;
        let event = DpEvent::dp_sgd(sigma, q, steps);
        let (eps_rdp, eps_pld) = (rdp::epsilon(&event, cli.delta)?, pld::epsilon(&event, cli.delta)?);
        if cli.json {
            println!(
                "{}",
                json!({"sigma": sigma, "q": q, "steps": steps, "delta": cli.delta, "eps_rdp": eps_rdp, "eps_pld": eps_pld})
            );
        } else {
            println!(
                "σ = {sigma}, q = {q}, {steps} steps, δ = {}:\n  ε (RDP) = {eps_rdp:.4}\n  ε (PLD) = {eps_pld:.4}",
                cli.delta
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // --sweep
    let steps = if cli.steps.is_empty() {
        vec![100, 1000]
    } else {
        cli.steps.clone()
    };
    let qs = cli.q.map_or(vec![0.001, 0.01, 0.1], |q| vec![q]);
    let sigmas = cli.sigma.map_or(vec![0.8, 1.0, 1.5, 3.0], |s| vec![s]);
    if !cli.json {
        println!("ε at δ = {} (RDP / PLD)\n", cli.delta);
        println!("{:>6} {:>7} {:>7} {:>10} {:>10}", "sigma", "q", "steps", "eps_rdp", "eps_pld");
    }
    for &t in &steps {
        for &q in &qs {
            for &sigma in &sigmas {
                let event = DpEvent::dp_sgd(sigma, q, t);
                let (eps_rdp, eps_pld) = (rdp::epsilon(&event, cli.delta)?, pld::epsilon(&event, cli.delta)?);
                if cli.json {
                    println!(
                        "{}",
                        json!({"sigma": sigma, "q": q, "steps": t, "delta": cli.delta, "eps_rdp": eps_rdp, "eps_pld": eps_pld})
                    );
                } else {
                    println!("{sigma:>6} {q:>7} {t:>7} {eps_rdp:>10.4} {eps_pld:>10.4}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
