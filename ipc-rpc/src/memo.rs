//! Memoized calls and compute-once keys: the wire types and methods
//! (`docs/architecture.md` §14, `docs/protocol.md` §8).
//!
//! * A method the server registers as *memoized* answers from the shared
//!   cache when it has seen an equal request before: the key is a BLAKE3
//!   hash of the method's name and version and of the request, with every
//!   blob handle replaced by the blob's content digest. What a request and
//!   a response pass as blobs is listed by [`BlobRefs`].
//! * A request frame may carry [`MEMO_BYPASS`](crate::wire::MEMO_BYPASS)
//!   (run the handler, neither read nor write the memo) or
//!   [`MEMO_REFRESH`](crate::wire::MEMO_REFRESH) (run it and replace the
//!   memo entry).
//! * [`CacheClaim`] is the server side of a client's `get_or_compute`: one
//!   caller at a time holds the claim on a key and computes; the others
//!   wait in the server until the key is put.
//! * Keys under [`MEMO_PREFIX`] are the server's own: clients cannot put or
//!   remove them.

use crate::blob::{BlobHandle, Hit};

/// Cache keys under this prefix hold memo entries; only the server writes
/// them.
///
/// ```
/// use ipc_rpc::memo::{MEMO_PREFIX, is_reserved};
/// assert!(is_reserved(&format!("{MEMO_PREFIX}cradle.example.work@1/00")));
/// assert!(!is_reserved("thumbs/cat.png"));
/// ```
pub const MEMO_PREFIX: &str = "cradle.memo/";

/// Whether `key` is reserved for the server's memo entries.
///
/// ```
/// assert!(ipc_rpc::memo::is_reserved("cradle.memo/x"));
/// ```
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(MEMO_PREFIX)
}

/// A blob's content digest: BLAKE3-256 of its bytes.
pub type Digest = [u8; 32];

/// The blob handles a value carries, in a fixed order. A memoized method's
/// request type lists the blobs it passes (their digests replace them in
/// the memo key); its response type lists the result blobs (stored with the
/// entry, leased to every caller the entry answers).
///
/// ```
/// use ipc_rpc::blob::BlobHandle;
/// use ipc_rpc::memo::BlobRefs;
///
/// struct Resize { image: BlobHandle, width: u32 }
/// impl BlobRefs for Resize {
///     fn blob_refs(&self, out: &mut Vec<BlobHandle>) {
///         self.image.blob_refs(out);
///     }
/// }
/// let h = BlobHandle { epoch: 1, id: 2, segment: 3, offset: 4096, len: 10 };
/// let mut found = Vec::new();
/// Resize { image: h, width: 64 }.blob_refs(&mut found);
/// assert_eq!(found, [h]);
/// ```
pub trait BlobRefs {
    /// Appends every blob handle of `self` to `out`.
    fn blob_refs(&self, out: &mut Vec<BlobHandle>);
}

impl BlobRefs for BlobHandle {
    fn blob_refs(&self, out: &mut Vec<BlobHandle>) {
        out.push(*self);
    }
}

impl<T: BlobRefs> BlobRefs for Option<T> {
    fn blob_refs(&self, out: &mut Vec<BlobHandle>) {
        if let Some(v) = self {
            v.blob_refs(out);
        }
    }
}

impl<T: BlobRefs> BlobRefs for Vec<T> {
    fn blob_refs(&self, out: &mut Vec<BlobHandle>) {
        for v in self {
            v.blob_refs(out);
        }
    }
}

impl<A: BlobRefs, B: BlobRefs> BlobRefs for (A, B) {
    fn blob_refs(&self, out: &mut Vec<BlobHandle>) {
        self.0.blob_refs(out);
        self.1.blob_refs(out);
    }
}

/// Types that carry no blob.
macro_rules! no_blobs {
    ($($t:ty),*) => {
        $(impl BlobRefs for $t {
            fn blob_refs(&self, _: &mut Vec<BlobHandle>) {}
        })*
    };
}
no_blobs!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    i8,
    i16,
    i32,
    i64,
    f32,
    f64,
    String,
    [u8; 32]
);

crate::method! {
    /// The BLAKE3-256 digest of a sealed blob's bytes, computed once (on
    /// the offload pool) and remembered by the server.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::BlobHandle;
    /// use ipc_rpc::memo::BlobDigest;
    ///
    /// let h = BlobHandle { epoch: 1, id: 2, segment: 3, offset: 4096, len: 10 };
    /// let _request: <BlobDigest as Method>::Request = h;
    /// let _answer: <BlobDigest as Method>::Response = [0u8; 32];
    /// assert_eq!(BlobDigest::NAME, "cradle.blob.digest");
    /// ```
    pub BlobDigest = "cradle.blob.digest" version 1: BlobHandle => [u8; 32];
}

/// One memoized method's figures, an element of [`MemoList`]'s answer.
///
/// ```
/// use ipc_rpc::memo::MemoMethodStats;
/// let s = MemoMethodStats { hits: 3, misses: 1, ..Default::default() };
/// assert_eq!(s.hits + s.misses, 4);
/// ```
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Default, PartialEq, Eq,
)]
#[rkyv(crate = rkyv)]
pub struct MemoMethodStats {
    /// `name@version`.
    pub method: String,
    /// Entries in the cache (memory or disk).
    pub entries: u64,
    /// Their bytes: responses and result blobs.
    pub bytes: u64,
    /// Calls answered from an entry (including calls that waited for
    /// another caller's run).
    pub hits: u64,
    /// Calls that ran the handler.
    pub misses: u64,
    /// Calls that waited for an identical call's run (single flight).
    pub waits: u64,
    /// Calls that passed `MEMO_BYPASS`.
    pub bypassed: u64,
    /// Runs that failed (nothing cached).
    pub errors: u64,
    /// Entries found damaged or incomplete (a miss, reported).
    pub damaged: u64,
    /// Nanoseconds the handler ran, all runs.
    pub run_ns: u64,
    /// Nanoseconds saved: over every hit, the run time of the run that made
    /// its entry.
    pub saved_ns: u64,
}

crate::method! {
    /// Figures of the memoized methods (all, or the one named
    /// `name` or `name@version`), with their entries in the cache.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::memo::MemoList;
    /// let _all: <MemoList as Method>::Request = String::new();
    /// assert_eq!(MemoList::NAME, "cradle.memo.list");
    /// ```
    pub MemoList = "cradle.memo.list" version 1: String => Vec<MemoMethodStats>;

    /// Removes the memo entries of every memoized method (empty request) or
    /// of one (`name` or `name@version`), from memory and disk; answers how
    /// many entries went.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::memo::MemoClear;
    /// let _one: <MemoClear as Method>::Request = "cradle.example.work".into();
    /// assert_eq!(MemoClear::NAME, "cradle.memo.clear");
    /// ```
    pub MemoClear = "cradle.memo.clear" version 1: String => u64;
}

/// A request for the claim on a cache key (see [`CacheClaim`]).
///
/// ```
/// use ipc_rpc::memo::ClaimRequest;
/// let r = ClaimRequest { key: "thumbs/cat.png".into(), claim_ms: 60_000, wait_ms: 25_000 };
/// assert!(r.wait_ms < r.claim_ms);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct ClaimRequest {
    /// The key (the rules of `blob::check_key`; not under [`MEMO_PREFIX`]).
    pub key: String,
    /// How long a granted claim lasts, in milliseconds, unless the key is
    /// put, the claim given up ([`CacheUnclaim`]) or the session closed.
    pub claim_ms: u32,
    /// How long to wait in the server for another caller's claim to end.
    pub wait_ms: u32,
}

/// The answer to [`CacheClaim`].
///
/// ```
/// use ipc_rpc::memo::Claim;
/// fn next_step(c: &Claim) -> &'static str {
///     match c {
///         Claim::Hit(_) => "use the blob",
///         Claim::OnDisk => "load it (cradle.cache.load)",
///         Claim::Claimed => "compute, then put the key",
///         Claim::TimedOut => "ask again",
///     }
/// }
/// assert_eq!(next_step(&Claim::Claimed), "compute, then put the key");
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub enum Claim {
    /// The key is in memory: leased to the caller.
    Hit(Hit),
    /// The key is in the disk tier only: load it.
    OnDisk,
    /// The caller holds the claim: compute the value and put it.
    Claimed,
    /// `wait_ms` passed while another caller held the claim.
    TimedOut,
}

crate::method! {
    /// Compute-once: the key's blob if the cache has it; else the claim on
    /// the key if nobody holds it; else wait (in the server, at most
    /// `wait_ms`) until the holder puts the key (answered `Hit`), or gives
    /// up, dies, or lets its claim expire (the first waiter is answered
    /// `Claimed`).
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::memo::CacheClaim;
    /// assert_eq!(CacheClaim::NAME, "cradle.cache.claim");
    /// ```
    pub CacheClaim = "cradle.cache.claim" version 1: ClaimRequest => Claim;

    /// Gives up the caller's claim on a key (the computation failed); the
    /// next waiter gets it. Answers whether the caller held it.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::memo::CacheUnclaim;
    /// let _req: <CacheUnclaim as Method>::Request = "thumbs/cat.png".into();
    /// assert_eq!(CacheUnclaim::NAME, "cradle.cache.unclaim");
    /// ```
    pub CacheUnclaim = "cradle.cache.unclaim" version 1: String => bool;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_to_vec;
    use crate::rkyv::ser::allocator::Arena;

    /// The memo key replaces a handle by locating its archived bytes: the
    /// archived handle must be exactly the handle's five little-endian
    /// words.
    #[test]
    fn an_archived_handle_is_its_five_words() {
        let h = BlobHandle {
            epoch: 0x0102_0304_0506_0708,
            id: 9,
            segment: 10,
            offset: 4096,
            len: 77,
        };
        let bytes = encode_to_vec(&(7u8, h), &mut Arena::new(), 4096).unwrap();
        let image: &[u8] = bytemuck::bytes_of(&h);
        let at = bytes
            .windows(40)
            .position(|w| w == image)
            .expect("the handle's bytes appear verbatim");
        assert_eq!(at % 8, 0);
    }

    /// rkyv zeroes padding: equal values encode to equal bytes whatever
    /// the arena or buffer held before.
    #[test]
    fn equal_values_encode_to_equal_bytes() {
        #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        #[rkyv(crate = rkyv)]
        struct Padded {
            a: u8,
            b: u64,
            c: u16,
            s: String,
            o: Option<u32>,
        }
        let v = || Padded {
            a: 1,
            b: 2,
            c: 3,
            s: "x".repeat(13),
            o: Some(5),
        };
        let mut arena = Arena::new();
        // Dirty the arena, and the heap the buffers come from, first.
        for i in 0..10u8 {
            let junk = vec![0xabu8.wrapping_sub(i); 300];
            let _ = encode_to_vec(&junk, &mut arena, 1 << 16).unwrap();
            drop(vec![0xcdu8; 4096]);
        }
        let one = encode_to_vec(&v(), &mut arena, 1 << 16).unwrap();
        let two = encode_to_vec(&v(), &mut Arena::new(), 1 << 16).unwrap();
        assert_eq!(&one[..], &two[..]);
        // The padding after `a` (before the aligned `b`) is zero.
        assert!(
            one.iter().all(|&b| b != 0xab && b != 0xcd),
            "no stale byte leaks: {one:?}"
        );
    }
}
