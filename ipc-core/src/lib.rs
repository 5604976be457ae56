//! Shared-memory primitives for CRADLE.
//!
//! * [`shm`] — memfd segments: create, seal, map read-write or read-only, and
//!   open a received descriptor with the checks of docs/design.md §4.2.
//! * [`ring`] — the single-producer single-consumer frame ring of docs/design.md §5,
//!   safe against a hostile producer.
//! * [`doorbell`] — the spin-then-sleep wake-up protocol of docs/design.md §6 over a
//!   futex or an eventfd.
//! * [`sync`] — the loom shim: atomic word types and the [`sync::Atomics`]
//!   family the algorithms are generic over.
//!
//! # Safety model
//!
//! Memory a peer process can write is hostile input. This crate never creates a
//! `&` or `&mut` to such bytes: control words are atomics, payload bytes are
//! reached through raw pointers ([`ring::ShmSlice`], [`ring::WriteWindow`]) and
//! copied into private memory before anything interprets them. Every value read
//! from shared memory is read once, checked, and used from a local copy; a
//! violation is an error ([`ring::RingError::Corrupt`]), never a panic or an
//! out-of-bounds access.
//!
//! # Feature flags
//!
//! None. Building with `RUSTFLAGS="--cfg loom"` switches the models in
//! `src/tests/` on (see the README's development section).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::unnecessary_safety_comment)]

pub mod doorbell;
pub mod ring;
pub mod shm;
pub mod sync;

#[cfg(all(test, loom))]
mod tests;
