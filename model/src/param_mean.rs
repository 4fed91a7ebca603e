//! The running mean of parameter vectors: what the aggregator serves as the average of its
//! last models, and what a fit serves as the average of its late epochs (stochastic weight
//! averaging). Both average whole flat models of one layout, so one implementation serves both.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamMeanError {
    #[error("model {index} of the average has {got} parameters, the first had {expected}")]
    Length { index: usize, expected: usize, got: usize },
    #[error("an average of no models")]
    Empty,
}

/// The running mean of parameter vectors, summed in f64 so that averaging many f32 models
/// adds no rounding of its own beyond the final cast.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamMean {
    sum: Vec<f64>,
    models: usize,
}

impl ParamMean {
    pub fn add(&mut self, params: &[f32]) -> Result<(), ParamMeanError> {
        if self.models == 0 {
            self.sum = params.iter().map(|&p| f64::from(p)).collect();
        } else if params.len() != self.sum.len() {
            return Err(ParamMeanError::Length {
                index: self.models,
                expected: self.sum.len(),
                got: params.len(),
            });
        } else {
            for (s, &p) in self.sum.iter_mut().zip(params) {
                *s += f64::from(p);
            }
        }
        self.models += 1;
        Ok(())
    }

    pub fn models(&self) -> usize {
        self.models
    }

    pub fn finish(self) -> Result<Vec<f32>, ParamMeanError> {
        if self.models == 0 {
            return Err(ParamMeanError::Empty);
        }
        let n = self.models as f64;
        Ok(self.sum.into_iter().map(|s| (s / n) as f32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_is_the_elementwise_mean() {
        let mut avg = ParamMean::default();
        avg.add(&[1.0, -2.0, 0.5]).unwrap();
        avg.add(&[3.0, 2.0, 0.5]).unwrap();
        avg.add(&[2.0, 3.0, 2.0]).unwrap();
        assert_eq!(avg.models(), 3);
        assert_eq!(avg.finish().unwrap(), vec![2.0, 1.0, 1.0]);
    }

    #[test]
    fn one_model_averages_to_itself_bit_for_bit() {
        let params = [0.1f32, -1e-30, 3.402_823e38, f32::MIN_POSITIVE];
        let mut avg = ParamMean::default();
        avg.add(&params).unwrap();
        assert_eq!(avg.finish().unwrap(), params.to_vec());
    }

    #[test]
    fn summing_in_f64_keeps_what_f32_would_round_away() {
        // 2000 models alternating 0.1 and 0.3: the mean is 0.2 to f32 precision, which an f32
        // running sum (spacing 3e-5 once it passes 256) does not reach.
        let mut avg = ParamMean::default();
        let mut naive = 0.0f32;
        for _ in 0..1000 {
            for p in [0.1f32, 0.3] {
                avg.add(&[p]).unwrap();
                naive += p;
            }
        }
        assert_eq!(avg.finish().unwrap(), vec![0.2f32]);
        assert_ne!(naive / 2000.0, 0.2f32);
    }

    #[test]
    fn models_of_another_size_are_refused() {
        let mut avg = ParamMean::default();
        avg.add(&[1.0, 2.0]).unwrap();
        assert_eq!(
            avg.add(&[1.0]),
            Err(ParamMeanError::Length {
                index: 1,
                expected: 2,
                got: 1
            })
        );
        assert_eq!(avg.models(), 1);
        assert_eq!(ParamMean::default().finish(), Err(ParamMeanError::Empty));
    }
}
