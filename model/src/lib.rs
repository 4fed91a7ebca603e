//! The fused recommender (burn). Filled by the fused-recommender issue; deliberately empty so the foundation builds without the GPU stack.
