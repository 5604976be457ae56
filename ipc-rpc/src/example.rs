//! The example blob method the server binary registers: it reads a blob
//! argument and returns a derived blob.

use crate::blob::BlobHandle;

/// The answer of [`Invert`].
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
    pub Invert = "cradle.example.invert" version 1: BlobHandle => Inverted;
}
