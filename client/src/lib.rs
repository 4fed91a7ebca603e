//! The store agent. Filled by the federation issue; it will drive `fedfuse-transport` and `fedfuse-model`.
