//! The example blob method that the `cradle-server` binary registers, so
//! that a client can try blob arguments and blob results against a stock
//! server (the client's `blobs` example and the end-to-end tests call it).
//! It is part of this crate because both sides need its types; a server
//! built from the library offers it only if it registers a handler.

use crate::blob::BlobHandle;

/// The answer of [`Invert`].
///
/// ```
/// use ipc_rpc::blob::BlobHandle;
/// use ipc_rpc::example::Inverted;
///
/// let input = BlobHandle { epoch: 1, id: 4, segment: 2, offset: 4096, len: 1 << 20 };
/// let answer = Inverted {
///     checksum: 0x1234,
///     inverted: BlobHandle { id: 5, segment: 6, ..input },
/// };
/// // The inverted copy has the input's length, in a blob of its own.
/// assert_eq!(answer.inverted.len, input.len);
/// assert_ne!(answer.inverted.id, input.id);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct Inverted {
    /// xxh3-64 of the input blob's bytes.
    pub checksum: u64,
    /// A new blob: every byte of the input inverted (`!b`); leased to the
    /// caller (`Client::adopt`).
    pub inverted: BlobHandle,
}

crate::method! {
    /// Checksum an image and return an inverted copy of it, as a blob. Served
    /// on the offload pool.
    ///
    /// ```
    /// # fn round_trip<T: ipc_rpc::Wire>(v: &T) -> T {
    /// #     let mut arena = ipc_rpc::rkyv::ser::allocator::Arena::new();
    /// #     T::decode(&ipc_rpc::encode_to_vec(v, &mut arena, 1 << 16).unwrap()).unwrap()
    /// # }
    /// use ipc_rpc::Method;
    /// use ipc_rpc::blob::BlobHandle;
    /// use ipc_rpc::example::Invert;
    ///
    /// // The request is the handle of a sealed blob the caller holds.
    /// let image = BlobHandle { epoch: 1, id: 4, segment: 2, offset: 4096, len: 1 << 20 };
    /// let request: <Invert as Method>::Request = image;
    /// assert_eq!(round_trip(&request), image);
    /// assert_eq!(Invert::NAME, "cradle.example.invert");
    /// ```
    pub Invert = "cradle.example.invert" version 1: BlobHandle => Inverted;
}

/// The request of [`Work`].
///
/// ```
/// use ipc_rpc::example::WorkRequest;
/// let r = WorkRequest { seed: 7, sleep_ms: 50, input: None, out_len: 0 };
/// assert!(r.input.is_none());
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct WorkRequest {
    /// Any number: part of the answer.
    pub seed: u64,
    /// How long the handler sleeps, to stand for real work (at most 60 s).
    pub sleep_ms: u32,
    /// A blob whose bytes are hashed into the answer.
    pub input: Option<BlobHandle>,
    /// Length of the result blob (0: none).
    pub out_len: u64,
}

/// The answer of [`Work`].
///
/// ```
/// use ipc_rpc::example::WorkDone;
/// let d = WorkDone { value: 1, run: 1, output: None };
/// assert_eq!(d.run, 1);
/// ```
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct WorkDone {
    /// xxh3-64 of the input blob's bytes (none: of no bytes), seeded with
    /// `seed`.
    pub value: u64,
    /// Which run of the handler made this answer (1 for the first since
    /// the server started): a memo hit returns the run that made the entry.
    pub run: u64,
    /// `out_len` bytes: byte `i` is byte `i % 8` of `value` (little-endian)
    /// xor `i / 8` (truncated); leased to the caller.
    pub output: Option<BlobHandle>,
}

impl crate::memo::BlobRefs for WorkRequest {
    fn blob_refs(&self, out: &mut Vec<BlobHandle>) {
        self.input.blob_refs(out);
    }
}

impl crate::memo::BlobRefs for WorkDone {
    fn blob_refs(&self, out: &mut Vec<BlobHandle>) {
        self.output.blob_refs(out);
    }
}

/// Byte `i` of [`Work`]'s result blob for `value`.
///
/// ```
/// use ipc_rpc::example::work_byte;
/// assert_eq!(work_byte(0x0102, 0), 0x02);
/// assert_eq!(work_byte(0x0102, 9), 0x01 ^ 1);
/// ```
pub fn work_byte(value: u64, i: u64) -> u8 {
    value.to_le_bytes()[(i % 8) as usize] ^ (i / 8) as u8
}

crate::method! {
    /// The example memoized method of the `cradle-server` binary: hashes
    /// a blob, sleeps, returns the hash and a result blob derived from it,
    /// and counts its runs (so tests and benchmarks can see when the memo
    /// answered instead). Served on the offload pool.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::example::Work;
    /// assert_eq!(Work::NAME, "cradle.example.work");
    /// ```
    pub Work = "cradle.example.work" version 1: WorkRequest => WorkDone;

    /// How many times [`Work`]'s handler has run since the server started.
    ///
    /// ```
    /// use ipc_rpc::Method;
    /// use ipc_rpc::example::WorkRuns;
    /// let _req: <WorkRuns as Method>::Request = ();
    /// assert_eq!(WorkRuns::NAME, "cradle.example.work_runs");
    /// ```
    pub WorkRuns = "cradle.example.work_runs" version 1: () => u64;
}
