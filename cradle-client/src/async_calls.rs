//! Calls that pass blobs, calls of bytes methods and the method list,
//! through the tokio [`AsyncClient`]: the futures of `client_calls.rs`.

use crate::async_client::AsyncClient;
use crate::blob::BlobRef;
use crate::calls;
use crate::error::BlobError;
use ipc_rpc::blob::BlobHandle;
use ipc_rpc::provide::{ListMethods, MethodInfo};
use ipc_rpc::{CallError, Method, wire};
use std::time::Duration;

impl AsyncClient {
    /// Calls `M`, passing `blobs` with the request (leased to whoever
    /// serves it, no copy), and takes the result blobs the answer lists.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// ipc_rpc::method! {
    ///     /// Makes a thumbnail of the image blob passed with the call.
    ///     pub Thumb = "demo.thumb" version 1: u32 => u64;
    /// }
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let image = client.create(0).await?.seal().await?;
    /// let (len, thumbs) = client.call_with_blobs::<Thumb>(&64, &[image.handle()]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_with_blobs<M: Method>(
        &self,
        req: &M::Request,
        blobs: &[&BlobHandle],
    ) -> Result<(M::Response, Vec<BlobRef>), BlobError> {
        self.call_with_blobs_timeout::<M>(req, blobs, self.shared.opts.timeout)
            .await
    }

    /// [`call_with_blobs`](Self::call_with_blobs) with its own deadline.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use ipc_rpc::builtin::Ping;
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let t = std::time::Duration::from_secs(1);
    /// let (echo, _) = client.call_with_blobs_timeout::<Ping>(&vec![1], &[], t).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_with_blobs_timeout<M: Method>(
        &self,
        req: &M::Request,
        blobs: &[&BlobHandle],
        timeout: Duration,
    ) -> Result<(M::Response, Vec<BlobRef>), BlobError> {
        let blobs = calls::handles(blobs)?;
        let s = &self.shared.session;
        let f = calls::with_blobs(s, M::ID, crate::session::decode::<M>);
        let (r, results) = self
            .round_trip::<M, _>(req, &blobs, timeout, None, wire::NO_FLAGS, f)
            .await
            .map_err(crate::session::name_unknown::<M>)?;
        Ok((r, self.adopt_all(&results).await?))
    }

    /// Calls the bytes method `name` (version `version`) with `body` as
    /// is and `blobs` passed with it; answers the response body and the
    /// result blobs.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let (sum, _) = client.call_bytes("demo.checksum", 1, b"abc", &[]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_bytes(
        &self,
        name: &str,
        version: u32,
        body: &[u8],
        blobs: &[&BlobHandle],
    ) -> Result<(Vec<u8>, Vec<BlobRef>), BlobError> {
        self.call_bytes_timeout(name, version, body, blobs, self.shared.opts.timeout)
            .await
    }

    /// [`call_bytes`](Self::call_bytes) with its own deadline.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// let t = std::time::Duration::from_millis(100);
    /// let (sum, _) = client.call_bytes_timeout("demo.checksum", 1, b"abc", &[], t).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_bytes_timeout(
        &self,
        name: &str,
        version: u32,
        body: &[u8],
        blobs: &[&BlobHandle],
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<BlobRef>), BlobError> {
        let (id, payload) = calls::bytes_request(name, version, body, blobs, timeout)?;
        let s = &self.shared.session;
        let f = calls::with_blobs(s, id, calls::raw_body);
        let (r, results) = self
            .round_trip_raw(id, &payload, timeout, f)
            .await
            .map_err(|e| calls::name_unknown(e, name, version, id))?;
        Ok((r, self.adopt_all(&results).await?))
    }

    /// Every method the server answers, with per-provider figures.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = cradle_client::AsyncClient::connect_default().await?;
    /// for m in client.methods().await? {
    ///     println!("{} v{}", m.name, m.version);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        self.call::<ListMethods>(&()).await
    }

    /// Adopts handles leased to this session; a failure gives back the
    /// leases not adopted yet.
    pub(crate) async fn adopt_all(&self, hs: &[BlobHandle]) -> Result<Vec<BlobRef>, BlobError> {
        let mut out = Vec::with_capacity(hs.len());
        for (i, h) in hs.iter().enumerate() {
            match self.adopt(h).await {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.shared.session.queue_leases(&hs[i + 1..]);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}
