//! Aggregation throughput and peak memory: 100 updates of 10M parameters, fedfuse's streaming
//! mean beside numpy (streaming and stacked `np.average`) in the same run, each in its own
//! process so each peak RSS is its own; plus the disk-spilled coordinate median. Prints a table
//! and writes it into BENCHMARKS.md. Run: `cargo bench -p fedfuse-server --bench aggregate`.

#[path = "../../bench/benchmarks_md.rs"]
mod benchmarks_md;

use std::process::Command;
use std::time::Instant;

use fedfuse_server::aggregate::{AggregationRule, RoundAggregate};

const UPDATES: usize = 100;
const PARAMS: usize = 10_000_000;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Child mode: aggregate and print `seconds peak_rss_mb`.
fn child(rule: &str, updates: usize, params: usize) {
    let rule = match rule {
        "mean" => AggregationRule::ExampleWeightedMean,
        "median" => AggregationRule::CoordinateMedian,
        other => panic!("unknown rule {other}"),
    };
    let base: Vec<f32> = (0..params)
        .map(|i| ((i as u64 * 2_654_435_761) % 10_007) as f32 / 5_000.0 - 1.0)
        .collect();
    let mut upd = vec![0f32; params];
    let dir = std::env::temp_dir();
    let mut agg = RoundAggregate::new(rule, params, &dir).unwrap();
    let mut elapsed = 0.0;
    for u in 0..updates {
        let s = 1.0 + u as f32 * 1e-3;
        upd.iter_mut().zip(&base).for_each(|(o, b)| *o = b * s); // a fresh update, untimed
        let t = Instant::now();
        agg.add(&upd, (u + 1) as u64).unwrap();
        elapsed += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    let out = agg.finish().unwrap();
    elapsed += t.elapsed().as_secs_f64();
    std::hint::black_box(out);
    println!("{elapsed} {}", peak_rss_mb());
}

fn run_child(rule: &str, updates: usize, params: usize) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", rule, &updates.to_string(), &params.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn numpy(mode: &str) -> Option<(f64, f64, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join("bench/aggregate_numpy.sh"))
        .args([mode, &UPDATES.to_string(), &PARAMS.to_string()])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> Option<String> {
        let at = line.find(&format!("\"{k}\": "))? + k.len() + 4;
        Some(line[at..].split([',', '}']).next()?.trim().trim_matches('"').to_owned())
    };
    Some((
        field("seconds")?.parse().ok()?,
        field("peak_rss_mb")?.parse().ok()?,
        field("numpy")?,
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], args[i + 2].parse().unwrap(), args[i + 3].parse().unwrap());
        return;
    }
    let gb = (UPDATES * PARAMS * 4) as f64 / 1e9;
    let mut rows = Vec::new();
    let (t, rss) = run_child("mean", UPDATES, PARAMS);
    rows.push(format!(
        "| fedfuse streaming weighted mean | {:.2} GB/s | {:.2} s | {rss:.0} MB |",
        gb / t,
        t
    ));
    for mode in ["streaming", "stacked"] {
        match numpy(mode) {
            Some((t, rss, version)) => rows.push(format!(
                "| numpy {version} {mode} | {:.2} GB/s | {:.2} s | {rss:.0} MB |",
                gb / t,
                t
            )),
            None => rows.push(format!("| numpy {mode} | not run (venv unavailable) | | |")),
        }
    }
    let (mu, mp) = (100, 1_000_000);
    let (t, rss) = run_child("median", mu, mp);
    let mgb = (mu * mp * 4) as f64 / 1e9;
    rows.push(format!(
        "| fedfuse coordinate median, {mu} × {mp} (spilled to disk) | {:.2} GB/s | {:.2} s | {rss:.0} MB |",
        mgb / t,
        t
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut table = format!(
        "## Aggregation\n\n`cargo bench -p fedfuse-server --bench aggregate` ({cores} cores): {UPDATES} updates of {PARAMS} f32 parameters \
         ({gb:.1} GB of updates), example-weighted. GB/s counts update bytes folded in; the time excludes making the updates. \
         Peak RSS is each process's own (a fresh update buffer and the 40 MB base are included on both sides).\n\n\
         | aggregator | throughput | time | peak RSS |\n|---|---|---|---|\n"
    );
    for r in &rows {
        table.push_str(r);
        table.push('\n');
    }
    println!("{table}");
    benchmarks_md::write_section(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap(),
        "aggregate",
        &table,
    );
}
