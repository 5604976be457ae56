//! loom models.
mod loom_ring;
