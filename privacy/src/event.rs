//! Releases, described as `dp_accounting`'s `DpEvent`s.
//!
//! The JSON form (`{"type": "poisson_sampled", "sampling_probability": 0.01, "event": …}`)
//! maps one to one onto `dp_accounting.{GaussianDpEvent, PoissonSampledDpEvent,
//! SelfComposedDpEvent, ComposedDpEvent}`, so an auditor can replay a ledger in Python.

use serde::{Deserialize, Serialize};

use crate::AccountingError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DpEvent {
    /// Releases nothing.
    NoOp,
    /// The Gaussian mechanism with L2 sensitivity 1 and noise N(0, noise_multiplier²).
    Gaussian { noise_multiplier: f64 },
    /// `event` applied to a Poisson sample of the data, each record kept with probability
    /// `sampling_probability`.
    PoissonSampled { sampling_probability: f64, event: Box<DpEvent> },
    /// `event` repeated `count` times.
    SelfComposed { event: Box<DpEvent>, count: u64 },
    /// Several events in sequence.
    Composed { events: Vec<DpEvent> },
}

impl DpEvent {
    /// `steps` steps of DP-SGD (or rounds of DP-FedAvg): the Poisson-subsampled Gaussian,
    /// self-composed. With `q == 1` the sampling is dropped, as every record takes part.
    pub fn dp_sgd(noise_multiplier: f64, sampling_probability: f64, steps: u64) -> Self {
        let gaussian = DpEvent::Gaussian { noise_multiplier };
        let step = if sampling_probability >= 1.0 {
            gaussian
        } else {
            DpEvent::PoissonSampled {
                sampling_probability,
                event: Box::new(gaussian),
            }
        };
        DpEvent::SelfComposed {
            event: Box::new(step),
            count: steps,
        }
    }

    /// Flattens the event into (noise multiplier, sampling probability, count) terms, the one
    /// shape both accountants support. Nested sampling or sampling of a composition has no
    /// tight closed form here and is refused rather than accounted loosely.
    pub fn terms(&self) -> Result<Vec<SampledGaussian>, AccountingError> {
        let mut out = Vec::new();
        self.collect(1, &mut out)?;
        Ok(out)
    }

    fn collect(&self, times: u64, out: &mut Vec<SampledGaussian>) -> Result<(), AccountingError> {
        match self {
            DpEvent::NoOp => Ok(()),
            DpEvent::Gaussian { noise_multiplier } => {
                out.push(SampledGaussian::new(*noise_multiplier, 1.0, times)?);
                Ok(())
            }
            DpEvent::PoissonSampled {
                sampling_probability,
                event,
            } => match event.as_ref() {
                DpEvent::Gaussian { noise_multiplier } => {
                    out.push(SampledGaussian::new(*noise_multiplier, *sampling_probability, times)?);
                    Ok(())
                }
                DpEvent::NoOp => Ok(()),
                other => Err(AccountingError::InvalidParameter(format!(
                    "Poisson sampling of {other:?} is not supported; only of a Gaussian"
                ))),
            },
            DpEvent::SelfComposed { event, count } => event.collect(
                times
                    .checked_mul(*count)
                    .ok_or_else(|| AccountingError::InvalidParameter("composition count overflows".into()))?,
                out,
            ),
            DpEvent::Composed { events } => events.iter().try_for_each(|e| e.collect(times, out)),
        }
    }
}

/// One homogeneous block of a release: `count` applications of the Gaussian with this noise
/// multiplier to a Poisson sample with this rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampledGaussian {
    pub noise_multiplier: f64,
    pub sampling_probability: f64,
    pub count: u64,
}

impl SampledGaussian {
    pub fn new(noise_multiplier: f64, sampling_probability: f64, count: u64) -> Result<Self, AccountingError> {
        if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(AccountingError::InvalidParameter(format!(
                "noise multiplier {noise_multiplier}"
            )));
        }
        if !(0.0..=1.0).contains(&sampling_probability) {
            return Err(AccountingError::InvalidParameter(format!(
                "sampling probability {sampling_probability}"
            )));
        }
        Ok(Self {
            noise_multiplier,
            sampling_probability,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_dp_accounting_shape_and_round_trips() {
        let e = DpEvent::dp_sgd(1.1, 0.01, 100);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"type":"self_composed","event":{"type":"poisson_sampled","sampling_probability":0.01,"event":{"type":"gaussian","noise_multiplier":1.1}},"count":100}"#
        );
        assert_eq!(serde_json::from_str::<DpEvent>(&json).unwrap(), e);
    }

    #[test]
    fn terms_flatten_compositions_and_refuse_what_cannot_be_accounted() {
        let e = DpEvent::Composed {
            events: vec![
                DpEvent::dp_sgd(1.0, 0.1, 10),
                DpEvent::SelfComposed {
                    event: Box::new(DpEvent::dp_sgd(2.0, 1.0, 3)),
                    count: 2,
                },
            ],
        };
        let t = e.terms().unwrap();
        assert_eq!(
            t,
            vec![
                SampledGaussian::new(1.0, 0.1, 10).unwrap(),
                SampledGaussian::new(2.0, 1.0, 6).unwrap()
            ]
        );
        let nested = DpEvent::PoissonSampled {
            sampling_probability: 0.5,
            event: Box::new(DpEvent::dp_sgd(1.0, 0.5, 1)),
        };
        assert!(nested.terms().is_err());
        assert!(DpEvent::dp_sgd(-1.0, 0.5, 1).terms().is_err());
    }
}
