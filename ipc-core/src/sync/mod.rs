//! The one place atomics come from (the loom shim).
//!
//! Shared-memory layouts are cast from a mapping, so their words are always the
//! standard [`AtomicU32`]/[`AtomicU64`] (loom's atomics are larger and cannot be
//! cast from shared memory). The *algorithms* that run over those words — the
//! frame ring and the doorbell — are generic over [`Atomics`], a family of word
//! types plus a fence. Production code uses [`StdAtomics`]; the loom models use
//! `LoomAtomics` (only under `cfg(loom)`), whose words live on loom's heap.
//!
//! Nothing else in the workspace names `std::sync::atomic` or
//! `core::sync::atomic` directly; `.ci/run` checks it with a grep (clippy's
//! `disallowed-types` cannot tell a re-export from the original type).

pub use core::sync::atomic::Ordering;
/// Atomic word types for shared-memory layouts (always the std types).
pub use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};

/// A 32-bit atomic word as the ring and doorbell algorithms use it.
pub trait Word32: Sync {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, value: u32, order: Ordering);
    /// Atomic add, returning the previous value (wrapping).
    fn fetch_add(&self, value: u32, order: Ordering) -> u32;
}

/// A 64-bit atomic word as the ring algorithm uses it.
pub trait Word64: Sync {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, value: u64, order: Ordering);
}

/// A family of atomic words and the matching fence: the std one for real
/// memory, loom's for the models.
pub trait Atomics: 'static {
    /// The 32-bit word (futex words, flags).
    type U32: Word32;
    /// The 64-bit word (commit words, ring indices).
    type U64: Word64;
    /// A memory fence of this family (`std::sync::atomic::fence` or loom's).
    fn fence(order: Ordering);
}

/// The standard atomics: what runs over shared memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdAtomics;

impl Word32 for AtomicU32 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    #[inline(always)]
    fn store(&self, value: u32, order: Ordering) {
        AtomicU32::store(self, value, order)
    }
    #[inline(always)]
    fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_add(self, value, order)
    }
}

impl Word64 for AtomicU64 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    #[inline(always)]
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
}

impl Atomics for StdAtomics {
    type U32 = AtomicU32;
    type U64 = AtomicU64;
    #[inline(always)]
    fn fence(order: Ordering) {
        core::sync::atomic::fence(order)
    }
}

#[cfg(loom)]
pub use self::loom_impl::LoomAtomics;

#[cfg(loom)]
mod loom_impl {
    use super::{Atomics, Ordering, Word32, Word64};

    /// loom's atomics, for the models (`RUSTFLAGS="--cfg loom"`).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct LoomAtomics;

    impl Word32 for loom::sync::atomic::AtomicU32 {
        fn load(&self, order: Ordering) -> u32 {
            loom::sync::atomic::AtomicU32::load(self, order)
        }
        fn store(&self, value: u32, order: Ordering) {
            loom::sync::atomic::AtomicU32::store(self, value, order)
        }
        fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
            loom::sync::atomic::AtomicU32::fetch_add(self, value, order)
        }
    }

    impl Word64 for loom::sync::atomic::AtomicU64 {
        fn load(&self, order: Ordering) -> u64 {
            loom::sync::atomic::AtomicU64::load(self, order)
        }
        fn store(&self, value: u64, order: Ordering) {
            loom::sync::atomic::AtomicU64::store(self, value, order)
        }
    }

    impl Atomics for LoomAtomics {
        type U32 = loom::sync::atomic::AtomicU32;
        type U64 = loom::sync::atomic::AtomicU64;
        fn fence(order: Ordering) {
            loom::sync::atomic::fence(order)
        }
    }
}
