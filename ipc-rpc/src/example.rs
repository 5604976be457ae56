//! The example blob method the server binary registers: it reads a blob
//! argument and returns a derived blob.

use crate::Method;
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

/// Checksum an image and return an inverted copy of it, as a blob. Served
/// on the offload pool.
#[derive(Debug)]
pub struct Invert;
impl Method for Invert {
    const NAME: &'static str = "cradle.example.invert";
    const VERSION: u32 = 1;
    type Request = BlobHandle;
    type Response = Inverted;
}
