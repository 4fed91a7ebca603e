//! Differential privacy and accounting (opendp). Filled by the privacy issue; deliberately empty until then.
