//! loom models.

mod loom_doorbell;
