//! The method table: what a registered method is ([`Entry`]), how it is
//! served ([`Handler`]), and the lookup a worker does per request
//! ([`Registry`]).

use crate::blobs::BlobCtx;
use crate::reply::{Queued, Replier};
use ipc_core::ring::FrameMeta;
use ipc_rpc::rkyv::ser::allocator::Arena;
use std::sync::Arc;

/// An inline handler, erased: request bytes, the request's header, the reply
/// path. Returns whether the call was answered (always, today).
pub(crate) type InlineFn = Box<dyn Fn(&[u8], FrameMeta, &mut Replier<'_>) + Send + Sync>;

/// An offloaded handler, erased: request bytes, the request's header, the
/// blob context of the calling session, an arena, the ring's payload limit,
/// the index of the session's worker → the answer.
pub(crate) type OffloadFn =
    Arc<dyn Fn(&[u8], FrameMeta, &BlobCtx<'_>, &mut Arena, usize, usize) -> Answer + Send + Sync>;

/// What an offloaded handler gives its pool thread to send back.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The encoded answer, for the session's worker now (`None` if not even
    /// an error frame fits the ring; the call still counts as done).
    Now(Option<Queued>),
    /// Nothing now: the call waits in the server (a memoized call behind an
    /// identical one, a claim behind another caller's), and whoever ends
    /// the wait sends its completion to the worker.
    Later,
}

/// How a method is served.
pub(crate) enum Handler {
    /// On the worker.
    Inline(InlineFn),
    /// On the offload pool.
    Offload(OffloadFn),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline"),
            Self::Offload(_) => f.write_str("Offload"),
        }
    }
}

/// A registered method.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) name: &'static str,
    /// Its schema version (listed by `cradle.methods`).
    pub(crate) version: u32,
    /// Its schema hash (`Method::SCHEMA_HASH`; listed by `cradle.methods`).
    pub(crate) schema_hash: u64,
    pub(crate) handler: Handler,
}

impl Entry {
    /// The entry of method `M`, served by `handler`.
    pub(crate) fn of<M: ipc_rpc::Method>(handler: Handler) -> Self {
        Self {
            id: M::ID,
            name: M::NAME,
            version: M::VERSION,
            schema_hash: M::SCHEMA_HASH,
            handler,
        }
    }
}

/// The method table, sorted by id (binary search: a handful of methods).
#[derive(Debug)]
pub(crate) struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// Builds the table; fails on a duplicate id.
    pub(crate) fn new(mut entries: Vec<Entry>) -> Result<Self, (&'static str, u64)> {
        entries.sort_by_key(|e| e.id);
        for w in entries.windows(2) {
            if w[0].id == w[1].id {
                return Err((w[1].name, w[1].id));
            }
        }
        Ok(Self { entries })
    }

    /// The handler of `id`.
    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<&Handler> {
        self.entries
            .binary_search_by_key(&id, |e| e.id)
            .ok()
            .map(|i| &self.entries[i].handler)
    }
}
