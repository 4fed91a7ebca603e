//! EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).
//!
//! With X the binary shopper × item matrix of training interactions and G = XᵀX, EASE's item
//! weights are B = I − P·diag(1/diag(P)) with P = (G + λI)⁻¹, a zero diagonal by
//! construction; a shopper's scores are x·B. The inverse is dense (n² memory, n³ time), which
//! is fine at MovieLens-100K's 1,682 items and the synthetic default's 5,000.

use fedfuse_data::evaluate::{ScoreRows, Scorer};

use crate::BaselineError;

#[derive(Debug, Clone)]
pub struct Ease {
    n: usize,
    /// Row-major n × n, B[i][j] = weight of having seen i for scoring j.
    weights: Vec<f32>,
}

impl Ease {
    /// Fits EASE on `sequences` (each shopper's training items; repeats count once) over `n`
    /// items with L2 strength `lambda`.
    pub fn fit(sequences: &[Vec<u32>], n: usize, lambda: f64) -> Result<Self, BaselineError> {
        let mut gram = vec![0f64; n * n];
        let mut seen = Vec::new();
        for seq in sequences {
            seen.clear();
            seen.extend(seq.iter().map(|i| *i as usize).filter(|i| *i < n));
            seen.sort_unstable();
            seen.dedup();
            for &i in &seen {
                let row = &mut gram[i * n..(i + 1) * n];
                for &j in &seen {
                    row[j] += 1.0;
                }
            }
        }
        for i in 0..n {
            gram[i * n + i] += lambda;
        }
        let p = invert_spd(gram, n)?;
        let mut weights = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    weights[i * n + j] = (-p[i * n + j] / p[j * n + j]) as f32;
                }
            }
        }
        Ok(Self { n, weights })
    }

    /// The weight of having seen `i` when scoring `j`.
    pub fn weight(&self, i: usize, j: usize) -> f32 {
        self.weights[i * self.n + j]
    }
}

/// Inverse of a symmetric positive definite matrix by Cholesky (G = LLᵀ, then L⁻¹ and
/// G⁻¹ = L⁻ᵀL⁻¹), all in f64.
fn invert_spd(mut a: Vec<f64>, n: usize) -> Result<Vec<f64>, BaselineError> {
    // In place: lower triangle of `a` becomes L.
    for j in 0..n {
        let (done, rest) = a.split_at_mut(j * n);
        let row_j = &mut rest[..n];
        for k in 0..j {
            let lk = &done[k * n..k * n + k];
            let s: f64 = row_j[..k].iter().zip(lk).map(|(x, y)| x * y).sum();
            row_j[k] = (row_j[k] - s) / done[k * n + k];
        }
        let d = row_j[j] - row_j[..j].iter().map(|x| x * x).sum::<f64>();
        if d.is_nan() || d <= 0.0 {
            return Err(BaselineError::NotPositiveDefinite(j));
        }
        row_j[j] = d.sqrt();
    }
    // M = L⁻¹ (lower triangular), row by row.
    let mut m = vec![0f64; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0 / a[i * n + i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| a[i * n + k] * m[k * n + j]).sum();
            m[i * n + j] = -s / a[i * n + i];
        }
    }
    // G⁻¹ = Mᵀ M: entry (i, j) = Σ_{k ≥ max(i, j)} M[k][i] M[k][j]. Accumulate row by row of
    // M so the inner loop runs over contiguous memory.
    let mut inv = vec![0f64; n * n];
    for k in 0..n {
        let row = &m[k * n..k * n + k + 1];
        for i in 0..=k {
            let mki = row[i];
            if mki == 0.0 {
                continue;
            }
            let out = &mut inv[i * n..i * n + k + 1];
            for (o, mkj) in out.iter_mut().zip(row) {
                *o += mki * mkj;
            }
        }
    }
    for i in 0..n {
        for j in 0..i {
            inv[i * n + j] = inv[j * n + i];
        }
    }
    Ok(inv)
}

impl Scorer for Ease {
    fn items(&self) -> usize {
        self.n
    }

    fn score(&mut self, histories: &[Vec<u32>]) -> ScoreRows {
        let n = self.n;
        let mut scores = vec![0f32; histories.len() * n];
        let mut seen = Vec::new();
        for (h, out) in histories.iter().zip(scores.chunks_mut(n)) {
            seen.clear();
            seen.extend(h.iter().map(|i| *i as usize).filter(|i| *i < n));
            seen.sort_unstable();
            seen.dedup();
            for &i in &seen {
                for (o, w) in out.iter_mut().zip(&self.weights[i * n..(i + 1) * n]) {
                    *o += w;
                }
            }
        }
        ScoreRows {
            scores,
            components: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_times_matrix_is_identity() {
        let n = 5;
        // A = RᵀR + I is SPD.
        let r: Vec<f64> = (0..n * n).map(|k| ((k * 37 % 11) as f64) - 5.0).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| r[k * n + i] * r[k * n + j]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        let inv = invert_spd(a.clone(), n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| a[i * n + k] * inv[k * n + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "({i},{j}) = {v}");
            }
        }
        let mut not_spd = a;
        not_spd[0] = -1.0;
        assert!(invert_spd(not_spd, n).is_err());
    }

    #[test]
    fn ease_matches_its_closed_form_on_two_items() {
        // Two items, co-bought by 3 of 4 shoppers: G = [[4,3],[3,3]].
        let seqs = vec![vec![0, 1], vec![0, 1], vec![1, 0], vec![0]];
        let lambda = 1.0;
        let e = Ease::fit(&seqs, 2, lambda).unwrap();
        // G + λI = [[5,3],[3,4]], P = [[4,-3],[-3,5]] / 11; B₀₁ = −P₀₁/P₁₁ = 3/5,
        // B₁₀ = −P₁₀/P₀₀ = 3/4.
        assert!((e.weight(0, 1) - 0.6).abs() < 1e-6, "{}", e.weight(0, 1));
        assert!((e.weight(1, 0) - 0.75).abs() < 1e-6, "{}", e.weight(1, 0));
        assert_eq!(e.weight(0, 0), 0.0);
        let mut e = e;
        let rows = e.score(&[vec![0], vec![1, 1]]);
        assert_eq!(rows.scores, vec![0.0, 0.6, 0.75, 0.0]);
    }
}
