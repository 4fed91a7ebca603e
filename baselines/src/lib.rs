//! Reference recommenders, measured by the same protocol as the fused model
//! ([`fedfuse_data::evaluate`]):
//!
//! - [`Popularity`]: every shopper gets the most bought items they have not seen;
//! - [`Ease`]: Steck's EASE (2019), a closed-form item-item linear model that is a strong
//!   non-neural baseline on MovieLens-sized data.

pub mod ease;
pub mod popularity;

pub use ease::Ease;
pub use popularity::Popularity;

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("the item Gram matrix is not positive definite at pivot {0} (λ too small?)")]
    NotPositiveDefinite(usize),
}
