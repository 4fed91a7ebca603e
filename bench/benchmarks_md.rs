//! Shared by every benchmark (included with `#[path]`): replaces one marked section of the
//! workspace's BENCHMARKS.md, leaving the others as their benchmarks last wrote them.

use std::path::Path;

/// Writes `table` between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in
/// `{workspace}/BENCHMARKS.md`, appending the section if it is not there yet.
pub fn write_section(workspace: &Path, name: &str, table: &str) {
    let path = workspace.join("BENCHMARKS.md");
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nEach section is written by the benchmark named in it; rerun it to refresh.\n".into()
    });
    let block = format!("{begin}\n{table}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    std::fs::write(&path, new).expect("BENCHMARKS.md is writable");
    println!("wrote {}", path.display());
}

/// The machine a table was measured on, "model name (N cores)" from /proc/cpuinfo.
#[allow(dead_code)] // not every benchmark including this file names its CPU
pub fn cpu_name() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu} ({cores} cores)")
}
