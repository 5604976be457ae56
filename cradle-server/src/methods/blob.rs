//! The blob and cache methods every server offers, as inline handlers: they
//! only touch the store's tables, copy at most one small blob, or make a few
//! syscalls (memfd, seals), and some must send a descriptor on the session's
//! control socket just before answering.

use super::registry::{Entry, Handler};
use super::wrap;
use crate::blobs::{BlobCtx, BlobError, BlobStore};
use crate::error::HandlerError;
use crate::reply::Replier;
use bytemuck::bytes_of;
use ipc_rpc::blob::{
    Acquire, AuthorPool, CacheGet, CacheList, CacheLoad, CachePut, CachePutDurable, CacheRemove,
    CreateLarge, FD_GRANT_MAGIC, FdGrant, LargeInfo, ListPage, ListedKey, MapSegment, Release,
    SealLarge, SealSmall,
};
use ipc_rpc::handshake::send_with_fds;
use ipc_rpc::{ErrorCode, Method};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// A handler failure (`ErrorCode::Handler`) with `message`.
fn handler_error(message: String) -> BlobError {
    BlobError {
        code: ErrorCode::Handler,
        message,
    }
}

/// Sends `fd` as segment `segment`'s descriptor on the session's socket.
fn grant(out: &Replier<'_>, segment: u64, fd: &OwnedFd) -> Result<(), BlobError> {
    let msg = FdGrant {
        magic: FD_GRANT_MAGIC,
        segment,
    };
    send_with_fds(out.sock, bytes_of(&msg), &[fd.as_fd()]).map_err(|e| {
        handler_error(format!(
            "could not send segment {segment}'s descriptor on the control socket: {e}"
        ))
    })
}

/// A blob method served on the worker, with the session's reply path (for
/// descriptors).
fn method<M, F>(store: &Arc<BlobStore>, f: F) -> Entry
where
    M: Method,
    F: Fn(&BlobStore, &Replier<'_>, M::Request) -> Result<M::Response, BlobError>
        + Send
        + Sync
        + 'static,
{
    let store = Arc::clone(store);
    Entry {
        id: M::ID,
        name: M::NAME,
        version: M::VERSION,
        schema_hash: M::SCHEMA_HASH,
        handler: Handler::Inline(wrap::inline_session::<M, _>(move |out, req| {
            f(&store, out, req).map_err(|e| HandlerError::with_code(e.code, e.message))
        })),
    }
}

/// A blob method served on the offload pool (it may block on the disk).
fn offloaded<M, F>(f: F) -> Entry
where
    M: Method,
    F: Fn(&BlobCtx<'_>, M::Request) -> Result<M::Response, BlobError> + Send + Sync + 'static,
{
    Entry {
        id: M::ID,
        name: M::NAME,
        version: M::VERSION,
        schema_hash: M::SCHEMA_HASH,
        handler: Handler::Offload(wrap::offload_blob::<M, _>(move |ctx, req| {
            f(ctx, req).map_err(|e| HandlerError::with_code(e.code, e.message))
        })),
    }
}

/// The rule every client checks too (`ipc_rpc::blob::check_key`).
fn check_key(key: &str) -> Result<(), BlobError> {
    ipc_rpc::blob::check_key(key).map_err(|e| handler_error(e.to_string()))
}

/// [`check_key`], and not a key the server keeps its memo entries under.
fn check_writable_key(key: &str) -> Result<(), BlobError> {
    check_key(key)?;
    if ipc_rpc::memo::is_reserved(key) {
        return Err(handler_error(format!(
            "the key {key:?} is under {}, where the server keeps its memo entries: clients cannot put or remove such keys (clear them with `cradle memo clear`)",
            ipc_rpc::memo::MEMO_PREFIX
        )));
    }
    Ok(())
}

/// A page of keys fills at most this share of a response frame (an entry is
/// its key plus about 32 bytes of rkyv layout).
const LIST_FILL: usize = 2;

/// The blob and cache methods; `max_payload` is the ring's frame limit.
pub(crate) fn entries(store: &Arc<BlobStore>, max_payload: usize) -> Vec<Entry> {
    vec![
        method::<AuthorPool, _>(store, |st, out, ()| {
            let (info, fd) = st.author_pool(out.session)?;
            grant(out, info.segment, &fd)?;
            Ok(info)
        }),
        method::<SealSmall, _>(store, |st, out, (offset, len)| {
            st.seal_small(out.session, offset, len)
        }),
        method::<CreateLarge, _>(store, |st, out, len| {
            let (id, segment, fd) = st.create_large(out.session, len)?;
            if let Err(e) = grant(out, segment.segment, &fd) {
                st.release(out.session, &[], &[id]);
                return Err(e);
            }
            Ok(LargeInfo { id, segment })
        }),
        method::<SealLarge, _>(store, |st, out, id| st.seal_large(out.session, id)),
        method::<Acquire, _>(store, |st, out, (handle, want_fd)| {
            let (info, fd) = st.acquire(out.session, &handle, want_fd)?;
            if let Some((segment, fd)) = fd
                && let Err(e) = grant(out, segment, &fd)
            {
                st.release(out.session, &[handle.id], &[]);
                return Err(e);
            }
            Ok(info)
        }),
        method::<MapSegment, _>(store, |st, out, segment| {
            let (info, fd) = st.map_segment(segment)?;
            grant(out, segment, &fd)?;
            Ok(info)
        }),
        method::<Release, _>(store, |st, out, batch| {
            Ok(st.release(out.session, &batch.leases, &batch.aborted))
        }),
        method::<CacheList, _>(store, move |st, _out, req| {
            let prefix_ok = req.prefix.is_empty() || check_key(&req.prefix).is_ok();
            if !prefix_ok {
                return Err(handler_error(format!(
                    "the prefix {:?} can match no key",
                    req.prefix
                )));
            }
            let mut room = max_payload / LIST_FILL;
            let mut left = req.limit.max(1);
            let (page, more) = st.list(&req.prefix, &req.after, |e| {
                let cost = e.key.len() + 32;
                if left == 0 || cost > room {
                    return false;
                }
                left -= 1;
                room -= cost;
                true
            });
            Ok(ListPage {
                keys: page
                    .into_iter()
                    .map(|e| ListedKey {
                        key: e.key,
                        len: e.len,
                        in_memory: e.in_memory,
                        on_disk: e.on_disk,
                    })
                    .collect(),
                more,
            })
        }),
        method::<CacheGet, _>(store, |st, out, key| {
            check_key(&key)?;
            st.cache_get(out.session, &key)
        }),
        // The ones that may wait for the disk run on the offload pool: a put
        // may wait (bounded) for the disk writer to free memory, a durable
        // put for fsync, a load for a read, a remove for an unlink.
        offloaded::<CachePut, _>(|ctx, req| {
            check_writable_key(&req.key)?;
            ctx.store.cache_put(&req.key, &req.handle, req.if_absent)
        }),
        offloaded::<CachePutDurable, _>(|ctx, req| {
            check_writable_key(&req.key)?;
            ctx.store
                .cache_put_durable(&req.key, &req.handle, req.if_absent)
        }),
        offloaded::<CacheLoad, _>(|ctx, key| {
            check_key(&key)?;
            ctx.store.cache_load(ctx.session, &key)
        }),
        offloaded::<CacheRemove, _>(|ctx, key| {
            check_writable_key(&key)?;
            ctx.store.cache_remove(&key)
        }),
    ]
}
