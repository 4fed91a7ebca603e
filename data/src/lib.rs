//! fedfuse data (to be written).
