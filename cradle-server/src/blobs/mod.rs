//! The blob store and the memory cache (docs/design.md §8).
//!
//! # Where blob bytes live
//!
//! * **Small blobs** (the client's threshold, 256 KiB by default) are written
//!   in the author's own *author pool*: one memfd per session, created on
//!   first use, read-write for that client and the server. At seal the server
//!   copies the bytes once into a *server pool*: a memfd the server mapped
//!   read-write and then sealed `SHRINK | GROW | FUTURE_WRITE | SEAL`, so the
//!   server's mapping keeps working but nobody can create a writable mapping
//!   or `write()` any more. Readers map pools read-only, once per pool.
//! * **Large blobs** get a memfd each, sealed `SHRINK | GROW` and sent
//!   read-write to the author, who writes in place. At seal the author has
//!   unmapped it and the server adds `WRITE | SEAL`, which the kernel grants
//!   only when no writable mapping exists anywhere. From then on the server
//!   keeps only a read-only descriptor.
//!
//! # Handles, leases, reference counts
//!
//! A [`BlobHandle`] names a sealed blob. The table here is the truth: every
//! handle a client sends is checked against it (epoch, id, segment, offset,
//! length). A blob lives while anything refers to it: *leases* (per session,
//! counted in server-private memory), cache entries, and *pins* (a handler
//! reading it). A session's death drops exactly its leases, its unsealed
//! large blobs and its author pool.
//!
//! # Locking
//!
//! One mutex guards the tables. Byte copies (a small blob's seal, a handler's
//! read) run outside it, on ranges reserved under it.
//!
//! # Files, top-down
//!
//! Each file imports only files below it (no circles):
//!
//! (The wire-facing blob and cache methods, which call into these, live in
//! `methods/blob.rs` at the top of the crate.)
//!
//! * `keys.rs`: the cache's keyed operations (put, get, load, remove,
//!   list); queues puts for the disk writer.
//! * `digest.rs`: content digests (BLAKE3) of sealed blobs, computed once
//!   and kept in the table.
//! * `ctx.rs`: the handler API ([`BlobCtx`], [`BlobView`], [`BlobBuilder`]).
//! * `store.rs`: [`BlobStore`] (the mutex and what it guards), author pools,
//!   seals, large blobs, leases.
//! * `persist.rs`: the disk writer thread (write-behind, one FIFO) and the
//!   opening of the disk tier; it knows nothing of blobs.
//! * `cache.rs`: the memory cache's index and budget, and the eviction
//!   policy ([`EvictionPolicy`](cache::EvictionPolicy), implemented by
//!   [`Lru`](cache::Lru)).
//! * `table.rs`: blob ids, references (leases, pins, queued writes, cache
//!   keys), per-session quotas and the server-wide limit.
//! * `segments.rs`: the memfds (server pools, large blobs, author pools).
//! * `error.rs`, `budget.rs`: the error type; the memory budget.

pub(crate) mod budget;
pub(crate) mod cache;
mod ctx;
mod digest;
mod error;
mod keys;
mod persist;
mod segments;
mod store;
mod table;

pub use ctx::{BlobBuilder, BlobCtx, BlobView};
pub(crate) use error::BlobError;
pub use persist::default_disk_cache_dir;
pub(crate) use persist::open_tier;
pub(crate) use store::{BlobConfig, BlobStore, KeyWatcher, default_held_limit};
pub use table::SessionQuota;

#[cfg(test)]
mod tests;
