//! Noise samplers side by side in one run: the fast exact discrete Gaussian (one core, and all
//! cores through `GridGaussian::add`), opendp's `make_gaussian` (the exact reference, with
//! arbitrary-precision arithmetic), and rand_distr's float Normal (fast, and exactly what must
//! never be used for a release). Prints a table and writes it into BENCHMARKS.md.
//! Run: `cargo bench -p fedfuse-privacy --bench noise`.

#[path = "../../bench/benchmarks_md.rs"]
mod benchmarks_md;

use std::time::Instant;

use fedfuse_privacy::noise::{DEFAULT_GRID_EXPONENT, DiscreteGaussian, GridGaussian};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;
use rand::SeedableRng;
use rand_distr::Distribution;

fn rate(n: usize, secs: f64) -> String {
    format!("{:.3e}", n as f64 / secs)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sigma = 1.0; // noise std in value units; clip norm 1 → noise multiplier 1
    let k = DEFAULT_GRID_EXPONENT;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // Fast sampler, one core, integers on the 2^-20 grid (σ = 2^20 grid units).
    let g = DiscreteGaussian::new((sigma * 2f64.powi(-k)).ceil() as u64);
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    let n = 5_000_000;
    let t = Instant::now();
    let mut acc = 0i64;
    for _ in 0..n {
        acc = acc.wrapping_add(g.sample(&mut rng));
    }
    let fast_one = t.elapsed().as_secs_f64();
    std::hint::black_box(acc);
    rows.push((
        "fedfuse exact discrete Gaussian, 1 core".into(),
        rate(n, fast_one),
        format!("σ = 2^20 grid units, ChaCha20; {n} samples"),
    ));

    // Fast sampler through the release path: round to grid, noise, back to f32, all cores.
    let grid = GridGaussian::new(sigma, k).unwrap();
    let mut values = vec![0.25f32; 20_000_000];
    let t = Instant::now();
    grid.add(&mut values).unwrap();
    let fast_all = t.elapsed().as_secs_f64();
    rows.push((
        format!("fedfuse GridGaussian::add, {cores} cores"),
        rate(values.len(), fast_all),
        format!(
            "{} f32 values: {:.3e} per core-second",
            values.len(),
            values.len() as f64 / fast_all / cores as f64
        ),
    ));

    // opendp's make_gaussian on a vector of f32 (default features off: thread_rng).
    let dims = 200_000;
    let domain = VectorDomain::new(AtomDomain::<f32>::new_non_nan()).with_size(dims);
    let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(domain, L2Distance::<f64>::default(), sigma, Some(k)).unwrap();
    let input = vec![0.25f32; dims];
    let t = Instant::now();
    let out = m.invoke(&input).unwrap();
    let opendp = t.elapsed().as_secs_f64();
    std::hint::black_box(out);
    rows.push((
        "opendp make_gaussian (reference), 1 core".into(),
        rate(dims, opendp),
        format!("{dims} f32 values, k = {k}"),
    ));

    // Float Normal: fast and unsafe (Mironov 2012), for scale only.
    let normal = rand_distr::Normal::new(0.0f64, sigma).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    let n = 20_000_000;
    let t = Instant::now();
    let mut s = 0f64;
    for _ in 0..n {
        s += normal.sample(&mut rng);
    }
    let float = t.elapsed().as_secs_f64();
    std::hint::black_box(s);
    rows.push((
        "rand_distr float Normal (insecure), 1 core".into(),
        rate(n, float),
        "ChaCha20; leaks through low-order bits".into(),
    ));

    let machine = benchmarks_md::cpu_name();
    let mut table = format!(
        "## Noise samplers\n\n`cargo bench -p fedfuse-privacy --bench noise` on {machine}, σ = 1 on the 2^{k} grid. \
         Fast exact sampler is {:.0}× opendp per core.\n\n| sampler | samples/s | detail |\n|---|---|---|\n",
        (5_000_000.0 / fast_one) / (dims as f64 / opendp)
    );
    for (a, b, c) in &rows {
        table.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    println!("{table}");
    benchmarks_md::write_section(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap(),
        "noise",
        &table,
    );
}
