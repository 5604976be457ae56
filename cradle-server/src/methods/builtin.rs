//! `cradle.ping` and `cradle.stats`.

use super::registry::{Entry, Handler};
use super::wrap;
use crate::blobs::BlobStore;
use crate::provided::Providers;
use crate::stats::Shared;
use ipc_rpc::builtin::{Ping, Stats};
use ipc_rpc::{ErrorCode, Method, Wire};
use std::sync::Arc;

/// Ping and stats (whose answer is cut to fit `max_payload` bytes).
pub(super) fn entries(
    shared: &Arc<Shared>,
    store: &Arc<BlobStore>,
    providers: &Arc<Providers>,
    max_payload: usize,
) -> Vec<Entry> {
    let shared = Arc::clone(shared);
    let store = Arc::clone(store);
    let providers = Arc::clone(providers);
    vec![
        Entry {
            id: Ping::ID,
            name: Ping::NAME,
            version: Ping::VERSION,
            schema_hash: Ping::SCHEMA_HASH,
            // The echo answers with the request's own archive once it is
            // validated: `Ping`'s request and response types are the same,
            // so no decoding or allocation is needed (it showed in profiles).
            handler: Handler::Inline(Box::new(|bytes, req, out| {
                match <<Ping as Method>::Request as Wire>::access(bytes) {
                    Ok(_) => out.echo(req, bytes),
                    Err(e) => out.error(
                        req,
                        ErrorCode::Malformed,
                        format!("malformed cradle.ping request: {e}"),
                    ),
                }
            })),
        },
        Entry {
            id: Stats::ID,
            name: Stats::NAME,
            version: Stats::VERSION,
            schema_hash: Stats::SCHEMA_HASH,
            handler: Handler::Inline(wrap::inline::<Stats, _>(move |()| {
                let mut stats = shared.snapshot(&store, max_payload);
                stats.provided = providers.stats();
                Ok(stats)
            })),
        },
    ]
}
