//! Where blob bytes live: server pools (small blobs, many per memfd), large
//! blobs (a memfd each) and author pools (one per session). This file makes
//! the memfds; the table (`table.rs`) says which blob lives where.

use super::error::{BlobError, sys};
use ipc_core::shm::{Access, Mapping, RangeAlloc, Seals, Segment, init_header};
use ipc_rpc::blob::{
    AUTHOR_KIND, BLOB_LAYOUT_VERSION, BLOB_MAGIC, DATA_OFFSET, LARGE_KIND, POOL_ALIGN, POOL_KIND,
};
use std::sync::Arc;

/// A segment the store owns.
#[derive(Debug)]
pub(crate) enum SegEntry {
    /// A server pool: RW mapping (made before the seals), RO descriptor.
    Pool(Pool),
    /// A sealed large blob: its read-only descriptor.
    Large { seg: Segment },
    /// A large blob being written by a session: its read-write descriptor.
    Writing { seg: Segment, blob: u64, len: u64 },
    /// A session's author pool.
    Author { seg: Segment, map: Arc<Mapping> },
}

/// A server pool: sealed small blobs, copied in by the server.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) map: Arc<Mapping>,
    pub(crate) ro: Segment,
    pub(crate) alloc: RangeAlloc,
}

/// Creates, maps (populated), initialises and seals a server pool.
pub(crate) fn new_pool(len: u64) -> Result<Pool, BlobError> {
    let seg = Segment::create("cradle-pool", len as usize).map_err(|e| sys("create a pool", e))?;
    let map = seg
        .map_populated(Access::ReadWrite)
        .map_err(|e| sys("map a pool", e))?;
    init_header(&map, BLOB_MAGIC, BLOB_LAYOUT_VERSION, POOL_KIND)
        .map_err(|e| sys("initialise a pool", e))?;
    seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::FUTURE_WRITE | Seals::SEAL)
        .map_err(|e| sys("seal a pool", e))?;
    let ro = seg
        .read_only_fd()
        .and_then(Segment::from_fd)
        .map_err(|e| sys("reopen a pool read-only", e))?;
    Ok(Pool {
        map: Arc::new(map),
        ro,
        alloc: RangeAlloc::new(DATA_OFFSET, len, POOL_ALIGN),
    })
}

/// Creates a memfd of `DATA_OFFSET + len` bytes with its header written
/// (through a mapping that is gone when this returns), sealed against
/// shrinking and growing only.
pub(crate) fn new_large(len: u64) -> Result<Segment, BlobError> {
    let total = DATA_OFFSET
        .checked_add(len)
        .and_then(|t| usize::try_from(t).ok())
        .ok_or_else(|| BlobError::handler(format!("a blob of {len} bytes is too large")))?;
    let seg = Segment::create("cradle-blob", total).map_err(|e| sys("create a blob", e))?;
    {
        let map = seg
            .map(Access::ReadWrite)
            .map_err(|e| sys("map a blob", e))?;
        init_header(&map, BLOB_MAGIC, BLOB_LAYOUT_VERSION, LARGE_KIND)
            .map_err(|e| sys("initialise a blob", e))?;
    }
    seg.add_seals(Seals::SHRINK | Seals::GROW)
        .map_err(|e| sys("seal a blob", e))?;
    Ok(seg)
}

/// Creates a session's author pool of `len` bytes: mapped read-write by the
/// server, sealed against resizing.
pub(crate) fn new_author(len: u64) -> Result<SegEntry, BlobError> {
    let seg = Segment::create("cradle-author", len as usize)
        .map_err(|e| sys("create an author pool", e))?;
    let map = seg
        .map(Access::ReadWrite)
        .map_err(|e| sys("map an author pool", e))?;
    init_header(&map, BLOB_MAGIC, BLOB_LAYOUT_VERSION, AUTHOR_KIND)
        .map_err(|e| sys("initialise an author pool", e))?;
    seg.add_seals(Seals::SHRINK | Seals::GROW | Seals::SEAL)
        .map_err(|e| sys("seal an author pool", e))?;
    Ok(SegEntry::Author {
        seg,
        map: Arc::new(map),
    })
}
