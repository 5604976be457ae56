//! loom models of the concurrency core (`RUSTFLAGS="--cfg loom"`).

mod loom_doorbell;
mod loom_ring;
