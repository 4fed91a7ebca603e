//! The streaming mean: one f64 accumulator per parameter, updates folded in as they arrive.

use super::AggregateError;

pub struct StreamingMean {
    sum: Vec<f64>,
    weight: f64,
    count: usize,
    by_examples: bool,
    fixed_denominator: Option<f64>,
}

impl StreamingMean {
    pub fn new(params: usize, by_examples: bool, fixed_denominator: Option<f64>) -> Self {
        Self {
            sum: vec![0.0; params],
            weight: 0.0,
            count: 0,
            by_examples,
            fixed_denominator,
        }
    }

    pub fn add(&mut self, delta: &[f32], examples: f64) -> Result<(), AggregateError> {
        if delta.len() != self.sum.len() {
            return Err(AggregateError::WrongLength {
                expected: self.sum.len(),
                got: delta.len(),
            });
        }
        let w = if self.by_examples { examples.max(0.0) } else { 1.0 };
        for (s, d) in self.sum.iter_mut().zip(delta) {
            *s += w * f64::from(*d);
        }
        self.weight += w;
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn finish(self) -> Result<Vec<f32>, AggregateError> {
        let denominator = self.fixed_denominator.unwrap_or(self.weight);
        if self.count == 0 || denominator <= 0.0 {
            return Err(AggregateError::Empty);
        }
        Ok(self.sum.iter().map(|s| (s / denominator) as f32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_uniform_and_fixed_denominators() {
        let mut m = StreamingMean::new(2, true, None);
        m.add(&[1.0, 0.0], 1.0).unwrap();
        m.add(&[4.0, 3.0], 2.0).unwrap();
        assert_eq!(m.finish().unwrap(), vec![3.0, 2.0]);
        let mut u = StreamingMean::new(2, false, None);
        u.add(&[1.0, 0.0], 1.0).unwrap();
        u.add(&[4.0, 3.0], 2.0).unwrap();
        assert_eq!(u.finish().unwrap(), vec![2.5, 1.5]);
        let mut f = StreamingMean::new(1, false, Some(4.0));
        f.add(&[2.0], 100.0).unwrap();
        assert_eq!(f.finish().unwrap(), vec![0.5]);
        assert!(matches!(
            StreamingMean::new(1, true, None).finish(),
            Err(AggregateError::Empty)
        ));
        assert!(matches!(
            StreamingMean::new(2, true, None).add(&[1.0], 1.0),
            Err(AggregateError::WrongLength { .. })
        ));
    }
}
