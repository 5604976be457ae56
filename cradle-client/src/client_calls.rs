//! Calls that pass blobs, calls of bytes methods and the method list,
//! through the synchronous [`Client`] (docs/architecture.md "Provided
//! methods").
//!
//! Blobs pass with a call as descriptors pass with `SCM_RIGHTS`: the
//! request's envelope lists their handles, the server checks each and leases
//! it to the session that serves the call; result blobs come back the same
//! way, leased to the caller, and are adopted here as [`BlobRef`]s.

use crate::blob::BlobRef;
use crate::calls;
use crate::client::Client;
use crate::error::BlobError;
use crate::options::CallOptions;
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::provide::{ListMethods, MethodInfo};
use ipc_rpc::{CallError, Method, wire};

impl Client {
    /// Calls `M`, passing `blobs` with the request (the server leases each
    /// to whoever serves the call: no byte is copied), and takes the result
    /// blobs the answer lists. The caller keeps its own leases on `blobs`.
    ///
    /// ```no_run
    /// use cradle_client::Client;
    /// ipc_rpc::method! {
    ///     /// Makes a thumbnail of the image blob passed with the call.
    ///     pub Thumb = "demo.thumb" version 1: u32 => u64;
    /// }
    ///
    /// let client = Client::connect_default()?;
    /// let mut w = client.create(4)?;
    /// w.write_at(0, b"RGBA");
    /// let image = w.seal()?;
    /// let (len, results) = client.call_with_blobs::<Thumb>(&64, &[image.handle()])?;
    /// println!("{len} bytes: {:?}", results.first().map(|r| &r[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_with_blobs<M: Method>(
        &self,
        req: &M::Request,
        blobs: &[&BlobHandle],
    ) -> Result<(M::Response, Vec<BlobRef>), BlobError> {
        self.call_with_blobs_opts::<M>(req, blobs, self.default_opts())
    }

    /// [`call_with_blobs`](Self::call_with_blobs) with per-call options
    /// (the timeout is also the deadline the server and the provider see).
    ///
    /// ```no_run
    /// use cradle_client::{CallOptions, WaitMode};
    /// use ipc_rpc::builtin::Ping;
    /// use std::time::Duration;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let opts = CallOptions { timeout: Duration::from_secs(2), wait: WaitMode::Sleep };
    /// let (echo, blobs) = client.call_with_blobs_opts::<Ping>(&vec![1], &[], opts)?;
    /// assert!(blobs.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_with_blobs_opts<M: Method>(
        &self,
        req: &M::Request,
        blobs: &[&BlobHandle],
        opts: CallOptions,
    ) -> Result<(M::Response, Vec<BlobRef>), BlobError> {
        let blobs = calls::handles(blobs)?;
        let s = &*self.inner.session;
        let f = calls::with_blobs(s, M::ID, crate::session::decode::<M>);
        let (r, results) =
            self.inner
                .round_trip_blobs::<M, _>(req, &blobs, opts, true, wire::NO_FLAGS, f)?;
        Ok((r, self.adopt_all(&results)?))
    }

    /// Calls the bytes method `name` (version `version`): `body` goes as
    /// is, `blobs` pass with it; answers the response body and the result
    /// blobs. Any method can be called so, by name, with no Rust type: the
    /// encoding is the caller's and the provider's business.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// let (sum, _) = client.call_bytes("demo.checksum", 1, b"some bytes", &[])?;
    /// println!("checksum {sum:02x?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_bytes(
        &self,
        name: &str,
        version: u32,
        body: &[u8],
        blobs: &[&BlobHandle],
    ) -> Result<(Vec<u8>, Vec<BlobRef>), BlobError> {
        self.call_bytes_opts(name, version, body, blobs, self.default_opts())
    }

    /// [`call_bytes`](Self::call_bytes) with per-call options.
    ///
    /// ```no_run
    /// use cradle_client::{CallOptions, WaitMode};
    /// use std::time::Duration;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let opts = CallOptions { timeout: Duration::from_millis(200), wait: WaitMode::Sleep };
    /// let (sum, _) = client.call_bytes_opts("demo.checksum", 1, b"x", &[], opts)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_bytes_opts(
        &self,
        name: &str,
        version: u32,
        body: &[u8],
        blobs: &[&BlobHandle],
        opts: CallOptions,
    ) -> Result<(Vec<u8>, Vec<BlobRef>), BlobError> {
        self.call_bytes_with(name, version, body, blobs, opts, <[u8]>::to_vec)
    }

    /// [`call_bytes_opts`](Self::call_bytes_opts) that reads the response
    /// body in place with `f` (in the ring, no copy): with no blob passed or
    /// returned, a call allocates nothing.
    ///
    /// ```no_run
    /// use cradle_client::{CallOptions, WaitMode};
    /// use std::time::Duration;
    /// # let client = cradle_client::Client::connect_default()?;
    /// let opts = CallOptions { timeout: Duration::from_secs(1), wait: WaitMode::Sleep };
    /// let (n, _) = client.call_bytes_with("demo.checksum", 1, b"x", &[], opts, |b| b.len())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_bytes_with<R>(
        &self,
        name: &str,
        version: u32,
        body: &[u8],
        blobs: &[&BlobHandle],
        opts: CallOptions,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<(R, Vec<BlobRef>), BlobError> {
        let hs = calls::handles(blobs)?;
        let id = ipc_rpc::method_id(name, version);
        let s = &*self.inner.session;
        let f = calls::with_blobs(s, id, |b| Ok(f(b)));
        let (r, results) = self
            .inner
            .round_trip_raw(id, &hs, body, opts, f)
            .map_err(|e| calls::name_unknown(e, name, version, id))?;
        Ok((r, self.adopt_all(&results)?))
    }

    /// Every method the server answers: its own, those compiled into it,
    /// and those client processes provide, with per-provider figures.
    ///
    /// ```no_run
    /// # let client = cradle_client::Client::connect_default()?;
    /// for m in client.methods()? {
    ///     println!("{} v{}: {} providers", m.name, m.version, m.providers.len());
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        self.call::<ListMethods>(&())
    }

    /// Adopts handles leased to this session (result blobs, blobs passed
    /// to a provider); a failure gives back the leases not adopted yet.
    pub(crate) fn adopt_all(&self, hs: &[BlobHandle]) -> Result<Vec<BlobRef>, BlobError> {
        let mut out = Vec::with_capacity(hs.len());
        for (i, h) in hs.iter().enumerate() {
            match self.adopt(h) {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.inner.session.queue_leases(&hs[i + 1..]);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}
