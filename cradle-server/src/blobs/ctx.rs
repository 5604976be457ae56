//! What an offloaded handler may do with blobs ([`BlobCtx`]): read a blob a
//! client sent ([`BlobView`], pinned while it lives) and create result
//! blobs ([`BlobBuilder`]) for the calling session.
//!
//! A result blob counts as bytes being written by the calling session (its
//! quota) and against the server-wide limit until it is sealed or dropped.

use super::error::{BlobError, human};
use super::segments::{SegEntry, new_large};
use super::store::BlobStore;
use crate::error::HandlerError;
use ipc_core::shm::{Access, Mapping, Seals, Segment};
use ipc_rpc::blob::{BlobHandle, DATA_OFFSET};
use std::sync::Arc;

/// What an offloaded handler may do with blobs: read a blob a client sent,
/// create result blobs for the calling session.
///
/// ```
/// use cradle_server::{BlobCtx, HandlerError};
/// use ipc_rpc::blob::BlobHandle;
///
/// /// Returns a copy of the client's blob with every byte inverted.
/// fn invert(ctx: &BlobCtx<'_>, h: BlobHandle) -> Result<BlobHandle, HandlerError> {
///     let input = ctx.read(&h)?;
///     let mut out = ctx.create(input.bytes().len())?;
///     for (o, i) in out.bytes_mut().iter_mut().zip(input.bytes()) {
///         *o = !*i;
///     }
///     out.seal()
/// }
/// ```
#[derive(Debug)]
pub struct BlobCtx<'a> {
    pub(crate) store: &'a Arc<BlobStore>,
    pub(crate) session: u64,
}

/// A sealed blob a handler reads: pinned (never freed or evicted) until
/// dropped. Made by [`BlobCtx::read`].
///
/// ```
/// # use cradle_server::{BlobCtx, HandlerError};
/// # use ipc_rpc::blob::BlobHandle;
/// fn sum(ctx: &BlobCtx<'_>, h: BlobHandle) -> Result<u64, HandlerError> {
///     let view = ctx.read(&h)?;
///     Ok(view.bytes().iter().map(|&b| u64::from(b)).sum())
/// }
/// ```
pub struct BlobView {
    store: Arc<BlobStore>,
    blob: u64,
    /// A pool's mapping, or the blob's own read-only mapping.
    map: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for BlobView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobView")
            .field("blob", &self.blob)
            .field("len", &self.len)
            .finish()
    }
}

impl BlobView {
    /// Maps blob `blob`, which the caller has just pinned; the view owns
    /// that pin and drops it with itself (also if mapping fails).
    pub(crate) fn of_pinned(store: &Arc<BlobStore>, blob: u64) -> Result<Self, String> {
        let found = {
            let g = store.lock();
            g.table
                .blobs
                .get(&blob)
                .map(|b| (b.segment, b.offset, b.len))
        };
        let mapped = found
            .ok_or_else(|| format!("blob {blob} vanished"))
            .and_then(|(segment, offset, len)| {
                store
                    .map_blob_segment(segment)
                    .map(|map| (map, offset, len))
            });
        match mapped {
            Ok((map, offset, len)) => Ok(Self {
                store: Arc::clone(store),
                blob,
                map,
                offset: offset as usize,
                len: len as usize,
            }),
            Err(e) => {
                store.lock().table.unpin(blob);
                Err(e)
            }
        }
    }

    /// The blob's bytes.
    ///
    /// ```
    /// # fn f(view: &cradle_server::BlobView) {
    /// let first = view.bytes().first();
    /// # }
    /// ```
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the range is inside the live mapping (checked against the
        // table when the view was made; `self.map` keeps it mapped). The
        // bytes are immutable while the pin lives: no process can write a
        // sealed large blob (F_SEAL_WRITE) or a pool (FUTURE_WRITE), and the
        // server never writes a pool range of a live blob.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.offset), self.len) }
    }
}

impl Drop for BlobView {
    fn drop(&mut self) {
        self.store.lock().table.unpin(self.blob);
    }
}

/// A blob a handler is writing; [`seal`](Self::seal) it to return it.
/// Made by [`BlobCtx::create`]; dropped unsealed, it is given back.
///
/// ```
/// # use cradle_server::{BlobCtx, HandlerError};
/// # use ipc_rpc::blob::BlobHandle;
/// fn zeroes_then_ones(ctx: &BlobCtx<'_>) -> Result<BlobHandle, HandlerError> {
///     let mut b = ctx.create(8)?;
///     b.bytes_mut()[4..].fill(1);
///     b.seal()
/// }
/// ```
pub struct BlobBuilder {
    store: Arc<BlobStore>,
    session: u64,
    kind: Building,
    len: usize,
}

enum Building {
    Pool {
        segment: u64,
        offset: u64,
        map: Arc<Mapping>,
    },
    Large {
        seg: Segment,
        map: Option<Mapping>,
    },
    Done,
}

impl std::fmt::Debug for BlobBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBuilder")
            .field("session", &self.session)
            .field("len", &self.len)
            .finish()
    }
}

/// Blobs a handler creates up to this size go to a server pool; larger ones
/// get their own memfd.
const SERVER_SMALL_MAX: usize = 256 << 10;

fn handler_error(e: BlobError) -> HandlerError {
    HandlerError::with_code(e.code, e.message)
}

impl BlobCtx<'_> {
    /// The calling session.
    ///
    /// ```
    /// # fn f(ctx: &cradle_server::BlobCtx<'_>) {
    /// tracing::info!(session = ctx.session(), "called");
    /// # }
    /// ```
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Pins the blob `h` names (checked like any client handle) and maps it.
    /// Errors: a bad handle, or the server-wide limit if the blob is held
    /// by nothing else.
    ///
    /// ```
    /// # use cradle_server::{BlobCtx, HandlerError};
    /// # use ipc_rpc::blob::BlobHandle;
    /// fn len(ctx: &BlobCtx<'_>, h: BlobHandle) -> Result<usize, HandlerError> {
    ///     Ok(ctx.read(&h)?.bytes().len())
    /// }
    /// ```
    pub fn read(&self, h: &BlobHandle) -> Result<BlobView, HandlerError> {
        {
            let mut g = self.store.lock();
            // The client hears `BadHandle`, as for its own calls.
            g.table.check(self.store.epoch, h).map_err(handler_error)?;
            g.table.pin(h.id, true).map_err(handler_error)?;
        }
        BlobView::of_pinned(self.store, h.id)
            .map_err(|e| HandlerError::new(format!("cannot map blob {}: {e}", h.id)))
    }

    /// Starts a result blob of `len` bytes (zeroed), for the calling
    /// session. Its bytes count as being written by the session until it is
    /// sealed or dropped. Errors: the session's quota or the server-wide
    /// limit (`QuotaExceeded`), or the system refusing the memory.
    ///
    /// ```
    /// # use cradle_server::{BlobCtx, HandlerError};
    /// # use ipc_rpc::blob::BlobHandle;
    /// fn hello(ctx: &BlobCtx<'_>) -> Result<BlobHandle, HandlerError> {
    ///     let mut b = ctx.create(5)?;
    ///     b.bytes_mut().copy_from_slice(b"hello");
    ///     b.seal()
    /// }
    /// ```
    pub fn create(&self, len: usize) -> Result<BlobBuilder, HandlerError> {
        let len64 = len as u64;
        let what = format!("a result blob of {}", human(len64));
        let kind = {
            let mut g = self.store.lock();
            g.table
                .reserve(self.session, len64, &self.store.cfg.quota, "a result blob")
                .map_err(handler_error)?;
            if len <= SERVER_SMALL_MAX {
                match g.table.pool_alloc(len64, self.store.cfg.pool_segment_len) {
                    Ok((segment, offset, map)) => Ok(Building::Pool {
                        segment,
                        offset,
                        map,
                    }),
                    Err(e) => {
                        g.table.unreserve(self.session, len64);
                        return Err(handler_error(e));
                    }
                }
            } else {
                Err(())
            }
        };
        let kind = match kind {
            Ok(k) => k,
            // A memfd of its own, made outside the lock.
            Err(()) => {
                let made = new_large(len64).map_err(handler_error).and_then(|seg| {
                    let map = seg
                        .map(Access::ReadWrite)
                        .map_err(|e| HandlerError::new(format!("cannot map {what}: {e}")))?;
                    Ok(Building::Large {
                        seg,
                        map: Some(map),
                    })
                });
                match made {
                    Ok(k) => k,
                    Err(e) => {
                        self.store.lock().table.unreserve(self.session, len64);
                        return Err(e);
                    }
                }
            }
        };
        let mut b = BlobBuilder {
            store: Arc::clone(self.store),
            session: self.session,
            kind,
            len,
        };
        if let Building::Pool { .. } = b.kind {
            b.bytes_mut().fill(0);
        }
        Ok(b)
    }
}

impl BlobBuilder {
    /// The blob's bytes, to fill. Only this builder can write them: the
    /// memory is the server's alone until [`seal`](Self::seal).
    ///
    /// ```
    /// # fn f(b: &mut cradle_server::BlobBuilder) {
    /// b.bytes_mut().fill(0xff);
    /// # }
    /// ```
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let (base, off) = match &self.kind {
            Building::Pool { map, offset, .. } => (
                map.as_mut_ptr().expect("pools are mapped read-write"),
                *offset as usize,
            ),
            Building::Large { map: Some(m), .. } => (
                m.as_mut_ptr().expect("mapped read-write"),
                DATA_OFFSET as usize,
            ),
            _ => return &mut [],
        };
        // SAFETY: a reserved pool range or a fresh memfd no other process has
        // a descriptor of; inside the live mapping `self` owns; `&mut self`
        // makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(base.add(off), self.len) }
    }

    /// Seals the blob and gives the calling session a lease on it: return
    /// the handle in the response (the client adopts it).
    ///
    /// ```
    /// # use cradle_server::{BlobBuilder, HandlerError};
    /// # use ipc_rpc::blob::BlobHandle;
    /// fn finish(b: BlobBuilder) -> Result<BlobHandle, HandlerError> {
    ///     b.seal()
    /// }
    /// ```
    pub fn seal(mut self) -> Result<BlobHandle, HandlerError> {
        let kind = std::mem::replace(&mut self.kind, Building::Done);
        let store = Arc::clone(&self.store);
        let len = self.len as u64;
        let (segment, offset, large) = match kind {
            Building::Pool {
                segment, offset, ..
            } => (segment, offset, None),
            Building::Large { seg, map } => {
                drop(map);
                let sealed = seg
                    .add_seals(Seals::WRITE | Seals::SEAL)
                    .map_err(|e| format!("cannot seal the result blob: {e}"))
                    .and_then(|()| {
                        seg.read_only_fd()
                            .and_then(Segment::from_fd)
                            .map_err(|e| format!("cannot reopen the result blob: {e}"))
                    });
                match sealed {
                    Ok(ro) => (0, DATA_OFFSET, Some(ro)),
                    Err(m) => {
                        store.lock().table.unreserve(self.session, len);
                        return Err(HandlerError::new(m));
                    }
                }
            }
            Building::Done => return Err(HandlerError::new("sealed twice")),
        };
        let mut g = store.lock();
        let t = &mut g.table;
        let segment = match large {
            Some(ro) => {
                let id = t.fresh_id();
                t.segments.insert(id, SegEntry::Large { seg: ro });
                id
            }
            None => segment,
        };
        // Its bytes move from "being written" to "leased".
        t.unreserve(self.session, len);
        let id = t.fresh_id();
        t.insert_leased(id, (segment, offset, len), self.session, &store.cfg.quota)
            .map_err(handler_error)?;
        Ok(store.handle_of(id, segment, offset, len))
    }
}

impl AsMut<[u8]> for BlobBuilder {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

impl Drop for BlobBuilder {
    fn drop(&mut self) {
        let mut g = self.store.lock();
        let t = &mut g.table;
        match self.kind {
            Building::Pool {
                segment, offset, ..
            } => {
                if let Some(SegEntry::Pool(p)) = t.segments.get_mut(&segment) {
                    p.alloc.free(offset, self.len as u64);
                }
                t.unreserve(self.session, self.len as u64);
            }
            Building::Large { .. } => t.unreserve(self.session, self.len as u64),
            Building::Done => {}
        }
    }
}
