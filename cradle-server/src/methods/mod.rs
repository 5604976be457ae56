//! Methods: the table a worker dispatches on, the wrapping every handler gets
//! (decode, `catch_unwind`, encode), and the methods every server offers.
//!
//! * [`registry`] — [`Entry`], [`Handler`], [`Registry`].
//! * [`wrap`] — typed handlers erased into [`InlineFn`]/[`OffloadFn`].
//! * [`builtin`] — `cradle.ping` and `cradle.stats`.
//! * [`blob`] — the blob and cache methods.
//!
//! To add a method to every server, declare it in `ipc-rpc` and add its
//! entry to [`builtin_entries`]; an application adds its own with
//! [`ServerBuilder::inline`](crate::ServerBuilder::inline) and friends.

mod blob;
mod builtin;
mod registry;
mod wrap;

pub(crate) use registry::{Entry, Handler, OffloadFn, Registry};
pub(crate) use wrap::{inline, inline_session, offload, offload_blob};

use crate::blobs::BlobStore;
use crate::provided::Providers;
use crate::stats::Shared;
use std::sync::Arc;

/// The methods every server offers: ping, stats (its answer fits
/// `max_payload` bytes), and the blob and cache methods over `store`.
pub(crate) fn builtin_entries(
    shared: &Arc<Shared>,
    store: &Arc<BlobStore>,
    providers: &Arc<Providers>,
    max_payload: usize,
) -> Vec<Entry> {
    let mut entries = builtin::entries(shared, store, providers, max_payload);
    entries.extend(blob::entries(store, max_payload));
    entries
}
