//! The `Gateway` service: each request checked, turned into calls of the
//! local session, and answered; blobs move in chunks with their digest.

use crate::local::{Conn, Digest, Local, StageLimits};
use crate::stats::Counters;
use cradle_client::{Blob, BlobRef, ComputeError};
use cradle_proto::CHUNK_BYTES;
use cradle_proto::v1::gateway_server::Gateway;
use cradle_proto::v1::{
    CacheGetRequest, CacheListRequest, CacheListResponse, CachePutRequest, CachePutResponse,
    CacheRemoveRequest, CacheRemoveResponse, CallRequest, CallResponse, ClaimDown, ClaimStart,
    ClaimUp, DownloadChunk, DownloadRequest, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GatewayStatsRequest, GatewayStatsResponse, ListedKey, UploadChunk, UploadResponse, claim_down,
    claim_up,
};
use ipc_rpc::blob::{CacheList, CachePut, CachePutDurable, ListRequest, PutRequest};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// What the gateway lets remote callers do, and how much.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest blob one upload may carry.
    pub(crate) max_blob_bytes: u64,
    /// Bytes of uploads in progress on one connection, together.
    pub(crate) upload_bytes_per_connection: u64,
    /// Staged blobs: bytes and age.
    pub(crate) staging: StageLimits,
    /// Deadline of a forwarded call when the caller gives none, and the
    /// longest a caller may ask for.
    pub(crate) call_timeout: Duration,
}

/// `cradle.*` methods a remote caller may name in `Call`. The others move
/// leases or descriptors (blob and cache methods: the gateway's own RPCs
/// do that; compute-once claims: `CacheGetOrClaim`), make the gateway's
/// session a provider, or take a blob handle in their request body
/// (`cradle.example.invert`: a remote caller could name any blob by a
/// guessed handle). `cradle.example.work` may carry one too: it passes only
/// without (see [`check_body`]).
const ALLOWED_SERVER_METHODS: &[&str] = &[
    "cradle.ping",
    "cradle.stats",
    "cradle.cache.list",
    "cradle.cache.remove",
    "cradle.methods",
    "cradle.memo.list",
    "cradle.memo.clear",
    "cradle.example.work",
    "cradle.example.work_runs",
];

/// Refuses a request body of an allowed `cradle.*` method that names a
/// blob by handle (only `cradle.example.work` can).
fn check_body(method: &str, body: &[u8]) -> Result<(), Status> {
    use ipc_rpc::example::{Work, WorkRequest};
    use ipc_rpc::{Method, Wire};
    if method != Work::NAME {
        return Ok(());
    }
    let mut aligned = ipc_rpc::rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let req = WorkRequest::decode(&aligned)
        .map_err(|e| Status::invalid_argument(format!("{method}: a malformed request: {e}")))?;
    if req.input.is_some() {
        return Err(Status::permission_denied(format!(
            "{method}: an input blob named by handle is not accepted through the gateway"
        )));
    }
    Ok(())
}

/// Cheap to clone: a claim's task holds a clone while it runs.
#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) local: Arc<Local>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) limits: Limits,
    uploads: Arc<Mutex<HashMap<Option<SocketAddr>, u64>>>,
    /// One turn per key for remote claimants (see [`ClaimTurn`]).
    claim_turns: Arc<Mutex<TurnMap>>,
}

type TurnMap = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// A remote claimant's place in its key's turn. The local server grants
/// claims per session and answers `Claimed` again to the session that
/// holds one; every remote caller shares the gateway's session, so remote
/// claimants of one key take turns here first: one at a time asks the
/// server, the others wait for it to finish (then find the key stored, or
/// get the claim if it gave up). The entry goes with its last user.
struct ClaimTurn {
    map: Arc<Mutex<TurnMap>>,
    key: String,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl ClaimTurn {
    fn new(map: &Arc<Mutex<TurnMap>>, key: &str) -> Self {
        let lock = map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        Self {
            map: map.clone(),
            key: key.to_owned(),
            lock: Some(lock),
        }
    }

    fn lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.lock.clone().expect("present until drop")
    }
}

impl Drop for ClaimTurn {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Ours goes first, under the map's lock (the only place clones are
        // made or dropped): one left means only the map holds it.
        drop(self.lock.take());
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// Where an upload's chunks come from: an `UploadBlob` call, or the value
/// a claimant sends on its `CacheGetOrClaim` stream.
enum Source<'a> {
    Upload(&'a mut Streaming<UploadChunk>),
    Claim(&'a mut Streaming<ClaimUp>),
}

impl Source<'_> {
    /// The next chunk's bytes; `None` at the end of the stream.
    async fn next(&mut self) -> Result<Option<prost::bytes::Bytes>, Status> {
        match self {
            Self::Upload(s) => Ok(s.message().await?.map(|c| c.data)),
            Self::Claim(s) => match s.message().await? {
                None => Ok(None),
                Some(ClaimUp {
                    msg: Some(claim_up::Msg::Value(c)),
                }) => Ok(Some(c.data)),
                Some(_) => Err(Status::invalid_argument(
                    "a claimant's value is sent as value chunks only",
                )),
            },
        }
    }
}

type ClaimStream = ReceiverStream<Result<ClaimDown, Status>>;

fn down(msg: claim_down::Msg) -> ClaimDown {
    ClaimDown { msg: Some(msg) }
}

/// Bytes reserved for an upload on its connection, given back on drop.
struct UploadReservation {
    table: Arc<Mutex<HashMap<Option<SocketAddr>, u64>>>,
    peer: Option<SocketAddr>,
    bytes: u64,
}

impl Drop for UploadReservation {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.peer) {
            *n -= self.bytes;
            if *n == 0 {
                t.remove(&self.peer);
            }
        }
    }
}

/// The chunks of one blob, made one at a time as the reader asks: `Bytes`
/// slices of the leased shared memory (see [`Service::stream`]).
pub(crate) struct ChunkStream {
    whole: prost::bytes::Bytes,
    len: usize,
    /// Bytes sent so far; past `len` once the last message went.
    at: usize,
    known: Option<Digest>,
    hasher: blake3::Hasher,
    counters: Arc<Counters>,
    then: Option<Box<dyn FnOnce(Digest) + Send>>,
    span: tracing::Span,
}

/// Maps the pages of `data` (a slice of a blob's mapping) in one call
/// (`MADV_POPULATE_READ`) instead of a page fault per 64 KiB as TLS reads
/// them; advisory: an error (an older kernel) changes nothing.
fn populate(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    const PAGE: usize = 4096;
    let start = data.as_ptr() as usize & !(PAGE - 1);
    let end = (data.as_ptr() as usize + data.len()).next_multiple_of(PAGE);
    // SAFETY: the range covers only pages that hold bytes of `data`, which
    // lie in a live mapping (the lease behind the slice outlives this
    // call); MADV_POPULATE_READ only maps pages for reading, it changes no
    // byte and no protection.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_READ,
        );
    }
}

impl tokio_stream::Stream for ChunkStream {
    type Item = Result<DownloadChunk, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let s = &mut *self;
        let _in = s.span.enter();
        if s.at > s.len {
            return std::task::Poll::Ready(None);
        }
        if s.at < s.len {
            let end = (s.at + CHUNK_BYTES).min(s.len);
            let data = s.whole.slice(s.at..end);
            populate(&data);
            if s.known.is_none() {
                s.hasher.update(&data);
            }
            let msg = DownloadChunk {
                size: if s.at == 0 { s.len as u64 } else { 0 },
                data,
                blake3: Vec::new(),
            };
            s.counters
                .bump(&s.counters.download_bytes, (end - s.at) as u64);
            s.at = end;
            return std::task::Poll::Ready(Some(Ok(msg)));
        }
        // The last message: the digest (after the data, or alone for an
        // empty blob).
        s.at = s.len + 1;
        let hash = match s.known {
            Some(d) => d.hash,
            None => *s.hasher.finalize().as_bytes(),
        };
        if let Some(then) = s.then.take() {
            then(Digest {
                hash,
                size: s.len as u64,
            });
        }
        std::task::Poll::Ready(Some(Ok(DownloadChunk {
            size: 0,
            data: prost::bytes::Bytes::new(),
            blake3: hash.to_vec(),
        })))
    }
}

/// A leased blob as the owner of `Bytes` chunks: the chunks of a download
/// point into the shared memory itself, and the lease lives as long as any
/// of them.
struct Leased(Arc<BlobRef>);

impl AsRef<[u8]> for Leased {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Service {
    pub(crate) fn new(local: Arc<Local>, counters: Arc<Counters>, limits: Limits) -> Self {
        Self {
            local,
            counters,
            limits,
            uploads: Arc::default(),
            claim_turns: Arc::default(),
        }
    }

    fn reserve(&self, peer: Option<SocketAddr>, bytes: u64) -> Result<UploadReservation, Status> {
        let mut t = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let used = t.get(&peer).copied().unwrap_or(0);
        if used + bytes > self.limits.upload_bytes_per_connection {
            return Err(Status::resource_exhausted(format!(
                "uploads in progress on this connection would hold {} bytes; the limit is {} (--max-upload-bytes-per-connection)",
                used + bytes,
                self.limits.upload_bytes_per_connection
            )));
        }
        *t.entry(peer).or_insert(0) += bytes;
        Ok(UploadReservation {
            table: self.uploads.clone(),
            peer,
            bytes,
        })
    }

    async fn do_call(&self, req: CallRequest) -> Result<CallResponse, Status> {
        if req.method.starts_with("cradle.")
            && !ALLOWED_SERVER_METHODS.contains(&req.method.as_str())
        {
            return Err(Status::permission_denied(format!(
                "{} is not callable through the gateway (blob and cache methods have their own RPCs; providing methods is local only)",
                req.method
            )));
        }
        check_body(&req.method, &req.body)?;
        let conn = self.local.conn().await?;
        let mut held = Vec::with_capacity(req.blobs.len());
        for d in &req.blobs {
            let d = Digest::from_proto(Some(d))?;
            match conn.resolve(&d).await {
                Ok(Some(b)) => held.push(b),
                Ok(None) => {
                    return Err(Status::failed_precondition(format!(
                        "blob {} is not at the gateway; upload it first",
                        d.hex()
                    )));
                }
                Err(e) => return Err(self.local.blob_failed(&conn, &e).await),
            }
        }
        let handles: Vec<_> = held.iter().map(|b| b.handle()).collect();
        let timeout = match req.timeout_ms {
            0 => self.limits.call_timeout,
            ms => Duration::from_millis(ms).min(self.limits.call_timeout),
        };
        self.counters.bump(&self.counters.calls, 1);
        let r = conn
            .client
            .call_bytes_timeout(&req.method, req.version, &req.body, &handles, timeout)
            .await;
        let (body, results) = match r {
            Ok(x) => x,
            Err(e) => return Err(self.local.blob_failed(&conn, &e).await),
        };
        let mut blobs = Vec::with_capacity(results.len());
        for b in results {
            let size = b.len() as u64;
            let hash = tokio::task::block_in_place(|| *blake3::hash(&b).as_bytes());
            let d = Digest { hash, size };
            conn.stage(d, Arc::new(b), self.limits.staging);
            blobs.push(d.to_proto());
        }
        Ok(CallResponse { body, blobs })
    }

    async fn do_find_missing(
        &self,
        req: FindMissingBlobsRequest,
    ) -> Result<FindMissingBlobsResponse, Status> {
        let conn = self.local.conn().await?;
        let mut missing = Vec::new();
        for d in &req.digests {
            let d = Digest::from_proto(Some(d))?;
            match conn.resolve(&d).await {
                Ok(Some(_)) => {}
                Ok(None) => missing.push(d.to_proto()),
                Err(e) => return Err(self.local.blob_failed(&conn, &e).await),
            }
        }
        Ok(FindMissingBlobsResponse { missing })
    }

    async fn do_upload(
        &self,
        peer: Option<SocketAddr>,
        mut chunks: Streaming<UploadChunk>,
    ) -> Result<UploadResponse, Status> {
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an upload without a first message"))?;
        let d = Digest::from_proto(first.digest.as_ref())?;
        tracing::Span::current().record("digest", d.hex());
        tracing::Span::current().record("bytes", d.size);
        let conn = self.local.conn().await?;
        let blob = self
            .receive(&conn, peer, d, first.data, Source::Upload(&mut chunks))
            .await?;
        let r = match conn.client.get(blob.handle()).await {
            Ok(r) => r,
            Err(e) => return Err(self.local.blob_failed(&conn, &e).await),
        };
        drop(blob);
        conn.stage(d, Arc::new(r), self.limits.staging);
        self.counters.bump(&self.counters.uploads, 1);
        Ok(UploadResponse {
            digest: Some(d.to_proto()),
            bytes_received: d.size,
        })
    }

    /// Receives the blob of `d` from `peer` into a new local blob: `data`
    /// first, then what `src` sends; checked against the length and the
    /// hash, sealed only if both match (else nothing is stored).
    async fn receive(
        &self,
        conn: &Arc<Conn>,
        peer: Option<SocketAddr>,
        d: Digest,
        mut data: prost::bytes::Bytes,
        mut src: Source<'_>,
    ) -> Result<Blob, Status> {
        if d.size > self.limits.max_blob_bytes {
            return Err(Status::resource_exhausted(format!(
                "a blob of {} bytes exceeds the gateway's limit of {} (--max-blob-bytes)",
                d.size, self.limits.max_blob_bytes
            )));
        }
        let _reserved = self.reserve(peer, d.size)?;
        let size = usize::try_from(d.size)
            .map_err(|_| Status::invalid_argument("blob size does not fit this machine"))?;
        let mut w = match conn.client.create(size).await {
            Ok(w) => w,
            Err(e) => return Err(self.local.blob_failed(conn, &e).await),
        };
        let mut hasher = blake3::Hasher::new();
        let mut at = 0usize;
        loop {
            if at + data.len() > size {
                self.counters.bump(&self.counters.uploads_refused, 1);
                return Err(Status::invalid_argument(format!(
                    "the upload sent more than the {size} bytes its digest announced"
                )));
            }
            if !data.is_empty() {
                w.write_at(at, &data);
                hasher.update(&data);
                at += data.len();
                self.counters
                    .bump(&self.counters.upload_bytes, data.len() as u64);
            }
            match src.next().await {
                Ok(Some(c)) => data = c,
                Ok(None) => break,
                Err(e) => {
                    // Cut off: the unsealed blob is dropped, nothing stored.
                    self.counters.bump(&self.counters.uploads_refused, 1);
                    return Err(e);
                }
            }
        }
        if at != size {
            self.counters.bump(&self.counters.uploads_refused, 1);
            return Err(Status::invalid_argument(format!(
                "the upload ended after {at} of {size} bytes; nothing stored"
            )));
        }
        if *hasher.finalize().as_bytes() != d.hash {
            self.counters.bump(&self.counters.uploads_refused, 1);
            return Err(Status::invalid_argument(format!(
                "the bytes do not hash to {}; nothing stored",
                d.hex()
            )));
        }
        match w.seal().await {
            Ok(b) => Ok(b),
            Err(e) => Err(self.local.blob_failed(conn, &e).await),
        }
    }

    /// Streams `blob` in chunks, the digest of what was sent last (hashed
    /// on the way, unless `known` already: a blob whose digest the gateway
    /// computed before, by id, is not hashed again); when done, `then`
    /// learns the digest. Each chunk is made when the reader asks for it
    /// (HTTP/2 flow control): a slow reader holds the lease, not memory.
    fn stream(
        &self,
        blob: Arc<BlobRef>,
        known: Option<Digest>,
        then: impl FnOnce(Digest) + Send + 'static,
    ) -> ChunkStream {
        let len = blob.len();
        ChunkStream {
            whole: prost::bytes::Bytes::from_owner(Leased(blob)),
            len,
            at: 0,
            known,
            hasher: blake3::Hasher::new(),
            counters: self.counters.clone(),
            then: Some(Box::new(then)),
            span: tracing::Span::current(),
        }
    }

    pub(crate) async fn do_download(&self, req: DownloadRequest) -> Result<ChunkStream, Status> {
        let d = Digest::from_proto(req.digest.as_ref())?;
        let conn = self.local.conn().await?;
        match conn.resolve(&d).await {
            Ok(Some(b)) => Ok(self.stream(b, Some(d), |_| {})),
            Ok(None) => Err(Status::not_found(format!(
                "blob {} is not at the gateway",
                d.hex()
            ))),
            Err(e) => Err(self.local.blob_failed(&conn, &e).await),
        }
    }

    pub(crate) async fn do_cache_get(&self, req: CacheGetRequest) -> Result<ChunkStream, Status> {
        let conn = self.local.conn().await?;
        let b = match conn.client.cache().get(&req.key).await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(Status::not_found(format!("no key {:?}", req.key))),
            Err(e) => return Err(self.local.blob_failed(&conn, &e).await),
        };
        let id = b.handle().id;
        let known = conn.known_digest(&req.key, id);
        let key = req.key;
        let c2: Arc<Conn> = conn.clone();
        Ok(self.stream(Arc::new(b), known, move |d| c2.index(d, &key, id)))
    }

    /// `CacheGetOrClaim`: reads the first message, then leaves the rest to
    /// a task of its own ([`run_claim`](Self::run_claim)), which outlives
    /// the caller if it must: a claim the server grants after the caller
    /// went away is given back at once, not left to expire.
    async fn do_get_or_claim(
        &self,
        peer: Option<SocketAddr>,
        mut up: Streaming<ClaimUp>,
    ) -> Result<ClaimStream, Status> {
        let start = match up.message().await? {
            Some(ClaimUp {
                msg: Some(claim_up::Msg::Start(s)),
            }) => s,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of CacheGetOrClaim must be `start`",
                ));
            }
            None => return Err(Status::invalid_argument("a claim without a first message")),
        };
        let conn = self.local.conn().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let svc = self.clone();
        tokio::spawn(
            async move { svc.run_claim(conn, peer, start, up, tx).await }.in_current_span(),
        );
        Ok(ReceiverStream::new(rx))
    }

    /// A remote `get_or_compute`, through the gateway session's own
    /// (`AsyncCache::get_or_compute`): a hit or a value another caller
    /// puts is streamed back; a granted claim is announced (`claimed`),
    /// the caller's value received and put (`stored`). A caller that gives
    /// up, disconnects or stays silent longer than its claim makes the
    /// computation fail here, which gives the claim back to the server at
    /// once (its next waiter, local or remote, gets it).
    async fn run_claim(
        self,
        conn: Arc<Conn>,
        peer: Option<SocketAddr>,
        start: ClaimStart,
        mut up: Streaming<ClaimUp>,
        tx: tokio::sync::mpsc::Sender<Result<ClaimDown, Status>>,
    ) {
        let key = start.key;
        let claim = match start.claim_ms {
            0 => self.limits.call_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let turn = ClaimTurn::new(&self.claim_turns, &key);
        let _my_turn = tokio::select! {
            g = turn.lock().lock_owned() => g,
            _ = tx.closed() => return, // gone before its turn: nothing held
        };
        let mut computed = false;
        let (flag, tx_c, up_c, conn_c, svc) = (&mut computed, &tx, &mut up, &conn, &self);
        let compute = move || {
            *flag = true;
            async move {
                if tx_c
                    .send(Ok(down(claim_down::Msg::Claimed(true))))
                    .await
                    .is_err()
                {
                    return Err(Status::cancelled("the claimant went away"));
                }
                let value = async move {
                    let first = match up_c.message().await? {
                        Some(ClaimUp {
                            msg: Some(claim_up::Msg::Value(c)),
                        }) => c,
                        Some(_) => {
                            return Err(Status::invalid_argument(
                                "after `claimed`, a claimant sends its value",
                            ));
                        }
                        None => return Err(Status::cancelled("the claimant gave the claim up")),
                    };
                    let d = Digest::from_proto(first.digest.as_ref())?;
                    svc.receive(conn_c, peer, d, first.data, Source::Claim(up_c))
                        .await
                };
                match tokio::time::timeout(claim, value).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "the claimant sent no value within its claim ({} ms)",
                        claim.as_millis()
                    ))),
                }
            }
        };
        let r = conn
            .client
            .cache()
            .get_or_compute(&key, claim, compute)
            .await;
        let blob = match r {
            Ok(b) => b,
            Err(ComputeError::Compute(status)) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
            Err(ComputeError::Cache(e)) => {
                let _ = tx.send(Err(self.local.blob_failed(&conn, &e).await)).await;
                return;
            }
        };
        drop(_my_turn);
        drop(turn);
        if computed {
            // The claimant has the bytes it sent.
            let _ = tx.send(Ok(down(claim_down::Msg::Stored(true)))).await;
            return;
        }
        let id = blob.handle().id;
        let known = conn.known_digest(&key, id);
        let c2 = conn.clone();
        let mut chunks = self.stream(Arc::new(blob), known, move |d| c2.index(d, &key, id));
        while let Some(c) = chunks.next().await {
            if tx
                .send(c.map(|c| down(claim_down::Msg::Chunk(c))))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn do_cache_put(&self, req: CachePutRequest) -> Result<CachePutResponse, Status> {
        let d = Digest::from_proto(req.digest.as_ref())?;
        let conn = self.local.conn().await?;
        let blob = match conn.resolve(&d).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(Status::failed_precondition(format!(
                    "blob {} is not at the gateway; upload it first",
                    d.hex()
                )));
            }
            Err(e) => return Err(self.local.blob_failed(&conn, &e).await),
        };
        let put = PutRequest {
            key: req.key.clone(),
            handle: *blob.handle(),
            if_absent: req.if_absent,
        };
        let r = if req.durable {
            conn.client
                .call_timeout::<CachePutDurable>(
                    &put,
                    self.limits.call_timeout.max(Duration::from_secs(60)),
                )
                .await
        } else {
            conn.client.call::<CachePut>(&put).await
        };
        let stored = match r {
            Ok(s) => s,
            Err(e) => return Err(self.local.failed(&conn, &e).await),
        };
        if stored {
            conn.index(d, &req.key, blob.handle().id);
            conn.unstage(&d);
        }
        Ok(CachePutResponse { stored })
    }

    async fn do_cache_remove(
        &self,
        req: CacheRemoveRequest,
    ) -> Result<CacheRemoveResponse, Status> {
        let conn = self.local.conn().await?;
        match conn.client.cache().remove(&req.key).await {
            Ok(removed) => Ok(CacheRemoveResponse { removed }),
            Err(e) => Err(self.local.failed(&conn, &e).await),
        }
    }

    async fn do_cache_list(&self, req: CacheListRequest) -> Result<CacheListResponse, Status> {
        let conn = self.local.conn().await?;
        let r = conn
            .client
            .call::<CacheList>(&ListRequest {
                prefix: req.prefix,
                after: req.after,
                limit: req.limit,
            })
            .await;
        match r {
            Ok(page) => Ok(CacheListResponse {
                keys: page
                    .keys
                    .into_iter()
                    .map(|k| ListedKey {
                        key: k.key,
                        size: k.len,
                        in_memory: k.in_memory,
                        on_disk: k.on_disk,
                    })
                    .collect(),
                more: page.more,
            }),
            Err(e) => Err(self.local.failed(&conn, &e).await),
        }
    }

    async fn do_stats(&self) -> GatewayStatsResponse {
        let c = &self.counters;
        let (staged_blobs, staged_bytes) = match self.local.current().await {
            Some(conn) => conn.staged(),
            None => (0, 0),
        };
        GatewayStatsResponse {
            upload_bytes: Counters::get(&c.upload_bytes),
            download_bytes: Counters::get(&c.download_bytes),
            uploads: Counters::get(&c.uploads),
            uploads_refused: Counters::get(&c.uploads_refused),
            calls: Counters::get(&c.calls),
            unauthenticated: Counters::get(&c.unauthenticated),
            staged_blobs,
            staged_bytes,
            local_connects: Counters::get(&c.local_connects),
            local_up: self.local.is_up().await,
        }
    }
}

fn peer_of<T>(r: &Request<T>) -> Option<SocketAddr> {
    r.remote_addr()
}

#[tonic::async_trait]
impl Gateway for Service {
    async fn call(&self, request: Request<CallRequest>) -> Result<Response<CallResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("call", method = %req.method, version = req.version, blobs = req.blobs.len());
        self.do_call(req).instrument(span).await.map(Response::new)
    }

    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("find_missing_blobs", digests = req.digests.len());
        self.do_find_missing(req)
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn upload_blob(
        &self,
        request: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let peer = peer_of(&request);
        let span = tracing::info_span!(
            "upload_blob",
            ?peer,
            digest = tracing::field::Empty,
            bytes = tracing::field::Empty
        );
        self.do_upload(peer, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    type DownloadBlobStream = ChunkStream;

    async fn download_blob(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let span = tracing::info_span!("download_blob");
        self.do_download(request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    type CacheGetStream = ChunkStream;

    async fn cache_get(
        &self,
        request: Request<CacheGetRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("cache_get", key = %req.key);
        self.do_cache_get(req)
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn cache_put(
        &self,
        request: Request<CachePutRequest>,
    ) -> Result<Response<CachePutResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("cache_put", key = %req.key, if_absent = req.if_absent, durable = req.durable);
        self.do_cache_put(req)
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn cache_remove(
        &self,
        request: Request<CacheRemoveRequest>,
    ) -> Result<Response<CacheRemoveResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("cache_remove", key = %req.key);
        self.do_cache_remove(req)
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn cache_list(
        &self,
        request: Request<CacheListRequest>,
    ) -> Result<Response<CacheListResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("cache_list", prefix = %req.prefix);
        self.do_cache_list(req)
            .instrument(span)
            .await
            .map(Response::new)
    }

    type CacheGetOrClaimStream = ClaimStream;

    async fn cache_get_or_claim(
        &self,
        request: Request<Streaming<ClaimUp>>,
    ) -> Result<Response<ClaimStream>, Status> {
        let peer = peer_of(&request);
        let span = tracing::info_span!("cache_get_or_claim", ?peer);
        self.do_get_or_claim(peer, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn gateway_stats(
        &self,
        _request: Request<GatewayStatsRequest>,
    ) -> Result<Response<GatewayStatsResponse>, Status> {
        Ok(Response::new(self.do_stats().await))
    }
}
