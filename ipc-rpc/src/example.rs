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
