//! Coordinate-wise median and trimmed mean without holding every update in memory.
//!
//! Each update is appended to a spill file as it arrives; at the end the file is read back in
//! blocks of coordinates (a block of every update at a time), so memory stays O(model size)
//! however many stores report. The spill file is removed when the aggregate is dropped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::AggregateError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RobustRule {
    Median,
    TrimmedMean(f64),
}

pub struct SpilledUpdates {
    params: usize,
    path: PathBuf,
    file: File,
    count: usize,
    rule: RobustRule,
}

impl SpilledUpdates {
    pub fn new(params: usize, dir: &Path, rule: RobustRule) -> Result<Self, AggregateError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".fedfuse-spill-{}-{n}", std::process::id()));
        let spill = |source| AggregateError::Spill {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(spill)?;
        Ok(Self {
            params,
            path,
            file,
            count: 0,
            rule,
        })
    }

    pub fn add(&mut self, delta: &[f32]) -> Result<(), AggregateError> {
        if delta.len() != self.params {
            return Err(AggregateError::WrongLength {
                expected: self.params,
                got: delta.len(),
            });
        }
        let bytes: Vec<u8> = delta.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file.write_all(&bytes).map_err(|source| AggregateError::Spill {
            path: self.path.clone(),
            source,
        })?;
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn finish(self) -> Result<Vec<f32>, AggregateError> {
        let n = self.count;
        if n == 0 {
            return Err(AggregateError::Empty);
        }
        // Block size so that a block of every update is about the size of the output.
        let block = (self.params / n).clamp(1024, 1 << 20).min(self.params.max(1));
        let mut out = vec![0f32; self.params];
        let mut buf = vec![0u8; block * 4];
        let mut column = vec![0f32; n];
        let mut values = vec![0f32; block * n];
        let mut start = 0;
        while start < self.params {
            let len = block.min(self.params - start);
            for u in 0..n {
                let offset = ((u * self.params + start) * 4) as u64;
                self.file
                    .read_exact_at(&mut buf[..len * 4], offset)
                    .map_err(|source| AggregateError::Spill {
                        path: self.path.clone(),
                        source,
                    })?;
                for (i, c) in buf[..len * 4].chunks_exact(4).enumerate() {
                    values[i * n + u] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            for i in 0..len {
                column.copy_from_slice(&values[i * n..(i + 1) * n]);
                column.sort_unstable_by(f32::total_cmp);
                out[start + i] = match self.rule {
                    RobustRule::Median if n % 2 == 1 => column[n / 2],
                    RobustRule::Median => 0.5 * (column[n / 2 - 1] + column[n / 2]),
                    RobustRule::TrimmedMean(trim) => {
                        let cut = ((n as f64) * trim.clamp(0.0, 0.49)).floor() as usize;
                        let kept = &column[cut..n - cut];
                        (kept.iter().map(|v| f64::from(*v)).sum::<f64>() / kept.len() as f64) as f32
                    }
                };
            }
            start += len;
        }
        Ok(out)
    }
}

impl Drop for SpilledUpdates {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_trimmed_mean_resist_an_outlier() {
        let dir = tempfile::tempdir().unwrap();
        let updates = [[1.0f32, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [1000.0, -1000.0]];
        let mut med = SpilledUpdates::new(2, dir.path(), RobustRule::Median).unwrap();
        let mut trim = SpilledUpdates::new(2, dir.path(), RobustRule::TrimmedMean(0.2)).unwrap();
        for u in &updates {
            med.add(u).unwrap();
            trim.add(u).unwrap();
        }
        assert_eq!(med.finish().unwrap(), vec![3.0, 20.0]);
        // Dropping one from each end: mean of {2, 3, 4} and of {10, 20, 30}.
        assert_eq!(trim.finish().unwrap(), vec![3.0, 20.0]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "spill files removed");
    }

    #[test]
    fn blocks_cover_large_models_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let params = 5000;
        let mut med = SpilledUpdates::new(params, dir.path(), RobustRule::Median).unwrap();
        for u in 0..4 {
            let delta: Vec<f32> = (0..params).map(|i| (i * (u + 1)) as f32).collect();
            med.add(&delta).unwrap();
        }
        let out = med.finish().unwrap();
        // Median of i·{1,2,3,4} is 2.5·i.
        assert!(out.iter().enumerate().all(|(i, v)| *v == 2.5 * i as f32));
    }
}
