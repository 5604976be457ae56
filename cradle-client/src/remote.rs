//! [`RemoteClient`]: the calls and the cache of a CRADLE server on another
//! machine, through its `cradle-gateway` (gRPC over TLS, feature `remote`),
//! with the shape of the local [`Client`](crate::Client): `call::<M>`,
//! `cache().get/put/...`; blobs are owned buffers (no shared memory crosses
//! machines). [`Connection`] picks local or remote from one string.
//!
//! Blobs move by content: before an upload the client asks the gateway
//! which BLAKE3 digests it lacks and sends only those; every download is
//! hashed as it arrives and checked against the digest the gateway sends
//! last (a mismatch is an error and nothing is returned).

use crate::client::Client;
use crate::error::ConnectError;
use cradle_proto::v1::gateway_client::GatewayClient;
use cradle_proto::v1::{
    CacheGetRequest, CacheListRequest, CachePutRequest, CacheRemoveRequest, CallRequest,
    Digest as PDigest, DownloadChunk, DownloadRequest, FindMissingBlobsRequest,
    GatewayStatsRequest, UploadChunk,
};
use cradle_proto::{AUTHORIZATION, CHUNK_BYTES};
use ipc_core::sync::{AtomicU64, Ordering};
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::{CallError, ErrorCode, Method};
use std::fmt;
use std::path::Path;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

pub use cradle_proto::v1::{GatewayStatsResponse as GatewayStats, ListedKey as RemoteKey};

/// The URL scheme prefix that selects the remote transport.
///
/// ```
/// assert_eq!(cradle_client::REMOTE_SCHEME, "cradle+");
/// ```
pub const REMOTE_SCHEME: &str = "cradle+";

/// The largest request body `call` sends (the gateway's default message
/// limit, less room for the envelope of the gRPC message).
const MAX_BODY: usize = (4 << 20) - 4096;

/// How to reach a gateway: the token, and whom to trust.
///
/// ```no_run
/// let opts = cradle_client::RemoteOptions::from_token_file("gateway.token".as_ref())?
///     .with_ca_file("ca.pem".as_ref())?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct RemoteOptions {
    /// The bearer token (the content of the gateway's `--token-file`).
    pub token: String,
    /// PEM certificates of the authorities to trust; `None`: the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Deadline of each call.
    pub timeout: Duration,
}

impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("token", &"<hidden>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RemoteOptions {
    /// Options with `token` and the default deadline (30 s).
    ///
    /// ```
    /// let o = cradle_client::RemoteOptions::new("secret");
    /// assert_eq!(o.token, "secret");
    /// ```
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            ca_pem: None,
            timeout: crate::DEFAULT_TIMEOUT,
        }
    }

    /// Options with the token read from `path` (surrounding white space
    /// dropped).
    ///
    /// ```no_run
    /// let o = cradle_client::RemoteOptions::from_token_file("gateway.token".as_ref())?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_token_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self::new(std::fs::read_to_string(path)?.trim()))
    }

    /// Trusts the authorities in the PEM file `path` (instead of the
    /// system's).
    ///
    /// ```no_run
    /// let o = cradle_client::RemoteOptions::new("t").with_ca_file("ca.pem".as_ref())?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_ca_file(mut self, path: &Path) -> std::io::Result<Self> {
        self.ca_pem = Some(std::fs::read(path)?);
        Ok(self)
    }
}

pub use crate::remote_error::GatewayError;

/// Adds the bearer token to every request.
#[derive(Clone)]
struct AddToken(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

type Grpc = GatewayClient<InterceptedService<Channel, AddToken>>;

/// The paths of the two downloads `receive` reads itself (the service's
/// and methods' names in the `.proto`).
const DOWNLOAD_BLOB: &str = "/cradle.gateway.v1.Gateway/DownloadBlob";
const CACHE_GET: &str = "/cradle.gateway.v1.Gateway/CacheGet";

/// A blob named by content: BLAKE3 of the bytes and their length.
///
/// ```
/// let d = cradle_client::ContentDigest::of(b"abc");
/// assert_eq!(d.size, 3);
/// assert_eq!(d.hex().len(), 64);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentDigest {
    /// BLAKE3 of the bytes.
    pub hash: [u8; 32],
    /// Their length.
    pub size: u64,
}

impl ContentDigest {
    /// The digest of `bytes`.
    ///
    /// ```
    /// let d = cradle_client::ContentDigest::of(b"");
    /// assert_eq!(d.size, 0);
    /// ```
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hash: *blake3::hash(bytes).as_bytes(),
            size: bytes.len() as u64,
        }
    }

    /// The hash in hex.
    ///
    /// ```
    /// assert!(cradle_client::ContentDigest::of(b"x").hex().chars().all(|c| c.is_ascii_hexdigit()));
    /// ```
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }

    fn to_proto(self) -> PDigest {
        PDigest {
            blake3: self.hash.to_vec(),
            size: self.size,
        }
    }

    fn from_proto(d: &PDigest) -> Result<Self, GatewayError> {
        let hash = d
            .blake3
            .as_slice()
            .try_into()
            .map_err(|_| GatewayError::Protocol("a digest is not 32 bytes".into()))?;
        Ok(Self { hash, size: d.size })
    }
}

/// What an upload did.
///
/// ```
/// let u = cradle_client::Uploaded { digest: cradle_client::ContentDigest::of(b"a"), bytes_sent: 0 };
/// assert_eq!(u.bytes_sent, 0); // the gateway had it already
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// The blob's digest.
    pub digest: ContentDigest,
    /// Bytes sent: 0 when the gateway could name the blob already.
    pub bytes_sent: u64,
}

/// A client of a CRADLE server on another machine, through its
/// `cradle-gateway`. Blocking, like [`Client`]; it runs its own small
/// tokio runtime (one thread), so call it from synchronous code, not from
/// inside an async task.
///
/// ```no_run
/// use cradle_client::{RemoteClient, RemoteOptions};
/// use ipc_rpc::builtin::Ping;
///
/// let opts = RemoteOptions::from_token_file("gateway.token".as_ref())?.with_ca_file("ca.pem".as_ref())?;
/// let remote = RemoteClient::connect("cradle+https://workstation:7443", opts)?;
/// assert_eq!(remote.call::<Ping>(&b"hi".to_vec())?, b"hi");
/// remote.cache().put("frames/1", &vec![7u8; 1 << 20])?;
/// assert_eq!(remote.cache().get("frames/1")?.unwrap()[0], 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RemoteClient {
    rt: tokio::runtime::Runtime,
    grpc: Grpc,
    /// The same channel, for downloads read off the HTTP/2 body
    /// (`remote_stream`), with the token they send.
    channel: Channel,
    token: tonic::codegen::http::HeaderValue,
    timeout: Duration,
    sent: AtomicU64,
    received: AtomicU64,
}

impl fmt::Debug for RemoteClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RemoteClient {
    /// Connects to the gateway at `url`: `cradle+https://host:port` (TLS)
    /// or `cradle+http://127.0.0.1:port` (plain text, for a gateway that
    /// serves loopback only).
    ///
    /// ```no_run
    /// let opts = cradle_client::RemoteOptions::new("token");
    /// let r = cradle_client::RemoteClient::connect("cradle+http://127.0.0.1:7443", opts)?;
    /// # Ok::<(), cradle_client::GatewayError>(())
    /// ```
    pub fn connect(url: &str, opts: RemoteOptions) -> Result<Self, GatewayError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cradle-remote")
            .enable_all()
            .build()
            .map_err(|e| GatewayError::Connect(format!("cannot start a runtime: {e}")))?;
        let target = url.strip_prefix(REMOTE_SCHEME).ok_or_else(|| {
            GatewayError::Connect(format!(
                "{url} is not a cradle+https:// or cradle+http:// URL"
            ))
        })?;
        let tls = target.starts_with("https://");
        if !tls && !target.starts_with("http://") {
            return Err(GatewayError::Connect(format!(
                "{url}: the scheme must be cradle+https or cradle+http"
            )));
        }
        let mut ep = Endpoint::from_shared(target.to_owned())
            .map_err(|e| GatewayError::Connect(format!("{url}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .max_frame_size(1u32 << 20)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if tls {
            let host = ep
                .uri()
                .host()
                .unwrap_or("localhost")
                .trim_matches(['[', ']'])
                .to_owned();
            let mut cfg = ClientTlsConfig::new().domain_name(host);
            cfg = match &opts.ca_pem {
                Some(pem) => cfg.ca_certificate(Certificate::from_pem(pem)),
                None => cfg.with_native_roots(),
            };
            ep = ep
                .tls_config(cfg)
                .map_err(|e| GatewayError::Connect(format!("TLS settings: {e}")))?;
        }
        let channel = rt
            .block_on(ep.connect())
            .map_err(|e| GatewayError::Connect(format!("{url}: {}", source_chain(&e))))?;
        let token: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {}", opts.token)
            .parse()
            .map_err(|_| GatewayError::Connect("the token is not printable ASCII".into()))?;
        let raw_token = tonic::codegen::http::HeaderValue::from_bytes(token.as_bytes())
            .map_err(|_| GatewayError::Connect("the token is not printable ASCII".into()))?;
        let grpc = GatewayClient::with_interceptor(channel.clone(), AddToken(token))
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20);
        Ok(Self {
            rt,
            grpc,
            channel,
            token: raw_token,
            timeout: opts.timeout,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// Calls `M` on the server behind the gateway, as
    /// [`Client::call`] does locally.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let stats = remote.call::<ipc_rpc::builtin::Stats>(&())?;
    /// println!("{} sessions", stats.sessions);
    /// # Ok(()) }
    /// ```
    pub fn call<M: Method>(&self, req: &M::Request) -> Result<M::Response, GatewayError> {
        let body = ipc_rpc::encode_to_vec(req, &mut Arena::new(), MAX_BODY).map_err(|e| {
            GatewayError::Call(match e {
                ipc_rpc::SendError::Encode(c) => CallError::Encode(c),
                ipc_rpc::SendError::TooLarge { len, max } => {
                    CallError::MessageTooLarge { len, max }
                }
                other => CallError::Remote {
                    code: ErrorCode::Malformed,
                    message: other.to_string(),
                },
            })
        })?;
        let (resp, _) = self.call_bytes(M::NAME, M::VERSION, &body, &[])?;
        let mut aligned = AlignedVec::<16>::with_capacity(resp.len());
        aligned.extend_from_slice(&resp);
        crate::session::decode::<M>(&aligned).map_err(GatewayError::Call)
    }

    /// Calls the method `name` (version `version`) with `body` as is and
    /// `blobs` passed with it (each uploaded only if the gateway lacks
    /// it); answers the response body and the result blobs' bytes.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let (sum, results) = remote.call_bytes("demo.checksum", 1, b"", &[b"abc"])?;
    /// # Ok(()) }
    /// ```
    pub fn call_bytes(
        &self,
        name: &str,
        version: u32,
        body: &[u8],
        blobs: &[&[u8]],
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), GatewayError> {
        let mut digests = Vec::with_capacity(blobs.len());
        for b in blobs {
            digests.push(self.upload(b)?.digest.to_proto());
        }
        let req = CallRequest {
            method: name.to_owned(),
            version,
            body: body.to_vec(),
            blobs: digests,
            timeout_ms: self.timeout.as_millis() as u64,
        };
        let resp = self
            .rt
            .block_on(self.grpc().call(self.request(req)))?
            .into_inner();
        let mut results = Vec::with_capacity(resp.blobs.len());
        for d in &resp.blobs {
            results.push(self.download(&ContentDigest::from_proto(d)?)?);
        }
        Ok((resp.body, results))
    }

    /// Which of `digests` the gateway cannot name (must be uploaded).
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let d = cradle_client::ContentDigest::of(b"abc");
    /// let missing = remote.find_missing(&[d])?;
    /// # Ok(()) }
    /// ```
    pub fn find_missing(
        &self,
        digests: &[ContentDigest],
    ) -> Result<Vec<ContentDigest>, GatewayError> {
        let req = FindMissingBlobsRequest {
            digests: digests.iter().map(|d| d.to_proto()).collect(),
        };
        let r = self
            .rt
            .block_on(self.grpc().find_missing_blobs(self.request(req)))?
            .into_inner();
        r.missing.iter().map(ContentDigest::from_proto).collect()
    }

    /// Makes `bytes` nameable at the gateway by digest: asks first, and
    /// sends them (in 1 MiB chunks) only if the gateway lacks them.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let first = remote.upload(b"model weights")?;
    /// let again = remote.upload(b"model weights")?;
    /// assert_eq!(again.bytes_sent, 0);
    /// # Ok(()) }
    /// ```
    pub fn upload(&self, bytes: &[u8]) -> Result<Uploaded, GatewayError> {
        let digest = ContentDigest::of(bytes);
        if self.find_missing(&[digest])?.is_empty() {
            return Ok(Uploaded {
                digest,
                bytes_sent: 0,
            });
        }
        let bytes_sent = self.rt.block_on(self.send_blob(digest, bytes))?;
        Ok(Uploaded { digest, bytes_sent })
    }

    async fn send_blob(&self, digest: ContentDigest, bytes: &[u8]) -> Result<u64, GatewayError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<UploadChunk>(2);
        let feed = async move { self.feed(&tx, digest, bytes, |c| c).await };
        let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.set_timeout(self.timeout.max(Duration::from_secs(3600)));
        let mut grpc = self.grpc();
        let call = grpc.upload_blob(req);
        let ((), r) = tokio::join!(feed, call);
        Ok(r?.into_inner().bytes_received)
    }

    /// The bytes of a blob the gateway can name by digest (a call's result
    /// blob, an upload), checked against the digest.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let up = remote.upload(b"abc")?;
    /// assert_eq!(remote.download(&up.digest)?, b"abc");
    /// # Ok(()) }
    /// ```
    pub fn download(&self, digest: &ContentDigest) -> Result<Vec<u8>, GatewayError> {
        let req = DownloadRequest {
            digest: Some(digest.to_proto()),
        };
        let (bytes, got) = self.receive(DOWNLOAD_BLOB, &req)?;
        // The bytes hashed to what the gateway announced (`receive`); the
        // blob asked for is the one with `digest`: compare the two.
        if got.hash != digest.hash || got.size != digest.size {
            return Err(GatewayError::DigestMismatch {
                expected: digest.hex(),
                got: got.hex(),
            });
        }
        Ok(bytes)
    }

    /// Calls the server-streaming RPC `path` with `req` and reads its
    /// `DownloadChunk`s straight off the HTTP/2 body (`remote_stream`):
    /// each chunk's bytes go once into the result and the hasher; the
    /// hash is checked against the digest of the last message. Answers
    /// the bytes and their digest.
    fn receive(
        &self,
        path: &'static str,
        req: &impl prost::Message,
    ) -> Result<(Vec<u8>, ContentDigest), GatewayError> {
        let msg = req.encode_to_vec();
        let mut channel = self.channel.clone();
        let mut sink = crate::remote_stream::Sink {
            out: Vec::new(),
            hasher: blake3::Hasher::new(),
            size: None,
        };
        // Parsed, copied and hashed on this thread while the runtime's
        // worker runs the connection (TLS, HTTP/2): two threads in a
        // pipeline. (Running the parser as a task beside the connection,
        // on the worker alone, measured 0.79-0.98x against 0.95-1.03x.)
        let announced = self.rt.block_on(crate::remote_stream::server_stream(
            &mut channel,
            path,
            &msg,
            &self.token,
            self.timeout.max(Duration::from_secs(3600)),
            &mut sink,
            // Relaxed: a tally for reporting; no partner.
            |n| {
                self.received.fetch_add(n as u64, Ordering::Relaxed);
            },
        ))?;
        let got = sink.hasher.finalize();
        if got.as_bytes()[..] != announced[..] {
            let expected = announced
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            return Err(GatewayError::DigestMismatch {
                expected,
                got: got.to_hex().to_string(),
            });
        }
        let digest = ContentDigest {
            hash: *got.as_bytes(),
            size: sink.out.len() as u64,
        };
        Ok((sink.out, digest))
    }

    /// Sends `bytes` as `UploadChunk`s (the first with `digest`) to `tx`,
    /// wrapped by `wrap`; stops early if the receiver is gone.
    async fn feed<T>(
        &self,
        tx: &tokio::sync::mpsc::Sender<T>,
        digest: ContentDigest,
        bytes: &[u8],
        wrap: impl Fn(UploadChunk) -> T,
    ) {
        let mut chunks = bytes.chunks(CHUNK_BYTES);
        let first = chunks.next().unwrap_or(&[]);
        let mut msg = UploadChunk {
            digest: Some(digest.to_proto()),
            data: tonic::codegen::Bytes::copy_from_slice(first),
        };
        loop {
            let n = msg.data.len() as u64;
            if tx.send(wrap(msg)).await.is_err() {
                return; // the call ended early; its status says why
            }
            // Relaxed: a tally for reporting; no partner.
            self.sent.fetch_add(n, Ordering::Relaxed);
            match chunks.next() {
                Some(c) => {
                    msg = UploadChunk {
                        digest: None,
                        data: tonic::codegen::Bytes::copy_from_slice(c),
                    }
                }
                None => return,
            }
        }
    }

    /// The cache of the server behind the gateway.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// remote.cache().put("greeting", b"hello")?;
    /// # Ok(()) }
    /// ```
    pub fn cache(&self) -> RemoteCache<'_> {
        RemoteCache { client: self }
    }

    /// The gateway's own counters (bytes moved, uploads, refusals, ...).
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// println!("{} bytes uploaded", remote.gateway_stats()?.upload_bytes);
    /// # Ok(()) }
    /// ```
    pub fn gateway_stats(&self) -> Result<GatewayStats, GatewayError> {
        let r = self.rt.block_on(
            self.grpc()
                .gateway_stats(self.request(GatewayStatsRequest {})),
        )?;
        Ok(r.into_inner())
    }

    /// Blob bytes this client has sent (uploads) since it connected.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) {
    /// println!("{} bytes sent", remote.bytes_sent());
    /// # }
    /// ```
    pub fn bytes_sent(&self) -> u64 {
        // Relaxed: a tally for reporting; no partner.
        self.sent.load(Ordering::Relaxed)
    }

    /// Blob bytes this client has received (downloads, cache gets).
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) {
    /// println!("{} bytes received", remote.bytes_received());
    /// # }
    /// ```
    pub fn bytes_received(&self) -> u64 {
        // Relaxed: a tally for reporting; no partner.
        self.received.load(Ordering::Relaxed)
    }
}

/// A blob arriving in `DownloadChunk`s: its length in the first, its
/// BLAKE3 in the last.
#[derive(Default)]
struct Assembly {
    out: Vec<u8>,
    hasher: blake3::Hasher,
    started: bool,
}

impl Assembly {
    /// Adds `c`; the whole blob once `c` was the last chunk and the bytes
    /// match its digest.
    fn take(
        &mut self,
        client: &RemoteClient,
        c: DownloadChunk,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        if !self.started {
            let size = usize::try_from(c.size)
                .map_err(|_| GatewayError::Protocol("a blob larger than memory".into()))?;
            self.out.reserve_exact(size);
            self.started = true;
        }
        if !c.data.is_empty() {
            self.hasher.update(&c.data);
            self.out.extend_from_slice(&c.data);
            // Relaxed: a tally for reporting; no partner.
            client
                .received
                .fetch_add(c.data.len() as u64, Ordering::Relaxed);
        }
        if c.blake3.is_empty() {
            return Ok(None);
        }
        let got = self.hasher.finalize();
        if got.as_bytes()[..] != c.blake3[..] {
            let expected = c
                .blake3
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            return Err(GatewayError::DigestMismatch {
                expected,
                got: got.to_hex().to_string(),
            });
        }
        Ok(Some(std::mem::take(&mut self.out)))
    }
}

/// The remote cache, as [`RemoteClient::cache`] gives it: values are owned
/// byte buffers.
///
/// ```no_run
/// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
/// let cache = remote.cache();
/// cache.put("k", b"v")?;
/// assert_eq!(cache.get("k")?.as_deref(), Some(&b"v"[..]));
/// assert!(cache.remove("k")?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RemoteCache<'c> {
    client: &'c RemoteClient,
}

impl RemoteCache<'_> {
    /// The longest a remote claim of [`get_or_compute`](Self::get_or_compute)
    /// lasts while its caller stays connected: 1 hour.
    ///
    /// ```
    /// assert_eq!(cradle_client::RemoteCache::CLAIM.as_secs(), 3600);
    /// ```
    pub const CLAIM: Duration = Duration::from_secs(3600);

    /// The value under `key`, digest-checked; `None` on a miss.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// if let Some(v) = remote.cache().get("k")? { println!("{} bytes", v.len()); }
    /// # Ok(()) }
    /// ```
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, GatewayError> {
        let req = CacheGetRequest {
            key: key.to_owned(),
        };
        match self.client.receive(CACHE_GET, &req) {
            Ok((bytes, _)) => Ok(Some(bytes)),
            Err(GatewayError::Status {
                code: Code::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn store(
        &self,
        key: &str,
        bytes: &[u8],
        if_absent: bool,
        durable: bool,
    ) -> Result<bool, GatewayError> {
        let c = self.client;
        let up = c.upload(bytes)?;
        let req = CachePutRequest {
            key: key.to_owned(),
            digest: Some(up.digest.to_proto()),
            if_absent,
            durable,
        };
        let r = c.rt.block_on(c.grpc().cache_put(c.request(req)))?;
        Ok(r.into_inner().stored)
    }

    /// Stores `bytes` under `key`, replacing what was there; the bytes
    /// travel only if the gateway cannot name them already.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// remote.cache().put("k", b"v")?;
    /// # Ok(()) }
    /// ```
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), GatewayError> {
        self.store(key, bytes, false, false).map(|_| ())
    }

    /// [`put`](Self::put), answered once the entry is durable on the
    /// server's disk tier; with `if_absent`, only if the key is absent.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// remote.cache().put_durable("k", b"v", false)?;
    /// # Ok(()) }
    /// ```
    pub fn put_durable(
        &self,
        key: &str,
        bytes: &[u8],
        if_absent: bool,
    ) -> Result<bool, GatewayError> {
        self.store(key, bytes, if_absent, true)
    }

    /// Stores `bytes` under `key` unless the key exists; whether it stored.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// if !remote.cache().put_if_absent("k", b"v")? { println!("someone was first"); }
    /// # Ok(()) }
    /// ```
    pub fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool, GatewayError> {
        self.store(key, bytes, true, false)
    }

    /// The value under `key`, computed once across every caller of the
    /// server, local and remote, as the local
    /// [`Cache::get_or_compute`](crate::Cache::get_or_compute) does: if
    /// the key is absent, one caller at a time holds its claim and runs
    /// `compute`; the others wait until it stores the value (then all get
    /// it), fails, disconnects or dies (then the next one computes). A
    /// remote claim lives as long as this call's stream to the gateway, at
    /// most [`CLAIM`](Self::CLAIM) (else the next waiter computes too).
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// let v = remote.cache().get_or_compute("answer", || Ok::<_, std::io::Error>(b"42".to_vec()))?;
    /// # Ok(()) }
    /// ```
    pub fn get_or_compute<E>(
        &self,
        key: &str,
        compute: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Vec<u8>, ComputeOrGatewayError<E>> {
        use cradle_proto::v1::{ClaimStart, ClaimUp, claim_down, claim_up};
        let c = self.client;
        let gw = ComputeOrGatewayError::Gateway;
        let (tx, rx) = tokio::sync::mpsc::channel::<ClaimUp>(2);
        let start = ClaimUp {
            msg: Some(claim_up::Msg::Start(ClaimStart {
                key: key.to_owned(),
                claim_ms: u32::try_from(Self::CLAIM.as_millis()).unwrap_or(u32::MAX),
            })),
        };
        let (mut down, first) =
            c.rt.block_on(async {
                tx.send(start)
                    .await
                    .map_err(|_| GatewayError::Protocol("the claim stream closed".into()))?;
                let mut r = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                // The wait for another caller's value, the computation and
                // the transfers all happen within this one call.
                r.set_timeout(c.timeout.max(Duration::from_secs(3600)) + Self::CLAIM);
                let mut down = c.grpc().cache_get_or_claim(r).await?.into_inner();
                let first = down.message().await?;
                Ok::<_, GatewayError>((down, first))
            })
            .map_err(gw)?;
        let mut a = Assembly::default();
        match first.and_then(|m| m.msg) {
            Some(claim_down::Msg::Claimed(_)) => {}
            Some(claim_down::Msg::Chunk(ch)) => {
                if let Some(v) = a.take(c, ch).map_err(gw)? {
                    return Ok(v);
                }
                return c
                    .rt
                    .block_on(async {
                        while let Some(m) = down.message().await? {
                            let Some(claim_down::Msg::Chunk(ch)) = m.msg else {
                                return Err(GatewayError::Protocol(
                                    "a value's transfer holds chunks only".into(),
                                ));
                            };
                            if let Some(v) = a.take(c, ch)? {
                                return Ok(v);
                            }
                        }
                        Err(GatewayError::Protocol(
                            "the transfer ended without its digest".into(),
                        ))
                    })
                    .map_err(gw);
            }
            Some(claim_down::Msg::Stored(_)) | None => {
                return Err(gw(GatewayError::Protocol(
                    "the gateway answered a claim with neither a value nor the claim".into(),
                )));
            }
        }
        // Ours: compute while the stream holds the claim. On failure the
        // stream is dropped, which gives the claim back.
        let v = compute().map_err(ComputeOrGatewayError::Compute)?;
        let digest = ContentDigest::of(&v);
        c.rt.block_on(async {
            let wrap = |u| ClaimUp {
                msg: Some(claim_up::Msg::Value(u)),
            };
            c.feed(&tx, digest, &v, wrap).await;
            drop(tx);
            match down.message().await? {
                Some(m) if matches!(m.msg, Some(claim_down::Msg::Stored(_))) => Ok(()),
                _ => Err(GatewayError::Protocol(
                    "the gateway did not confirm the stored value".into(),
                )),
            }
        })
        .map_err(gw)?;
        Ok(v)
    }

    /// Removes `key` from memory and disk; whether either held it.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// remote.cache().remove("k")?;
    /// # Ok(()) }
    /// ```
    pub fn remove(&self, key: &str) -> Result<bool, GatewayError> {
        let c = self.client;
        let req = CacheRemoveRequest {
            key: key.to_owned(),
        };
        Ok(c.rt
            .block_on(c.grpc().cache_remove(c.request(req)))?
            .into_inner()
            .removed)
    }

    /// Every key under `prefix`, with its size and tiers.
    ///
    /// ```no_run
    /// # fn demo(remote: &cradle_client::RemoteClient) -> Result<(), Box<dyn std::error::Error>> {
    /// for k in remote.cache().list("frames/")? { println!("{} {}", k.key, k.size); }
    /// # Ok(()) }
    /// ```
    pub fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, GatewayError> {
        let c = self.client;
        let mut keys = Vec::new();
        let mut after = String::new();
        loop {
            let req = CacheListRequest {
                prefix: prefix.to_owned(),
                after: after.clone(),
                limit: 10_000,
            };
            let page =
                c.rt.block_on(c.grpc().cache_list(c.request(req)))?
                    .into_inner();
            let last = page.keys.last().map(|k| k.key.clone());
            keys.extend(page.keys);
            match (page.more, last) {
                (true, Some(l)) => after = l,
                _ => return Ok(keys),
            }
        }
    }
}

/// The error of [`RemoteCache::get_or_compute`]: the computation's or the
/// gateway's.
///
/// ```
/// let e: cradle_client::ComputeOrGatewayError<std::io::Error> =
///     cradle_client::ComputeOrGatewayError::Gateway(cradle_client::GatewayError::Protocol("x".into()));
/// assert!(e.to_string().contains("protocol"));
/// ```
#[derive(Debug)]
pub enum ComputeOrGatewayError<E> {
    /// `compute` failed; nothing was stored.
    Compute(E),
    /// The gateway failed.
    Gateway(GatewayError),
}

impl<E: fmt::Display> fmt::Display for ComputeOrGatewayError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compute(e) => write!(f, "computing the value failed: {e}"),
            Self::Gateway(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ComputeOrGatewayError<E> {}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A local or a remote CRADLE server, chosen by one string, so application
/// code moves between them by configuration: `cradle+https://host:port`
/// (or `cradle+http://` on loopback) is remote, anything else is the path
/// of a local server's socket.
///
/// ```no_run
/// use cradle_client::Connection;
/// use ipc_rpc::builtin::Ping;
///
/// let target = std::env::var("CRADLE_TARGET").unwrap_or("/run/user/1000/cradle/cradle.sock".into());
/// let conn = Connection::open(&target, Some("gateway.token".as_ref()), None)?;
/// assert_eq!(conn.call::<Ping>(&b"hi".to_vec())?, b"hi");
/// conn.put("k", b"v")?;
/// assert_eq!(conn.get("k")?.as_deref(), Some(&b"v"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum Connection {
    /// The server on this machine, over shared memory.
    Local(Client),
    /// A server on another machine, through its gateway.
    Remote(Box<RemoteClient>),
}

impl Connection {
    /// Connects to `target`; a remote one reads its token from
    /// `token_file` and trusts the authorities in `ca_file` (else the
    /// system's).
    ///
    /// ```no_run
    /// let c = cradle_client::Connection::open("cradle+https://ws:7443", Some("t".as_ref()), Some("ca.pem".as_ref()))?;
    /// # Ok::<(), cradle_client::GatewayError>(())
    /// ```
    pub fn open(
        target: &str,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self, GatewayError> {
        if target.starts_with(REMOTE_SCHEME) {
            let token_file = token_file
                .ok_or_else(|| GatewayError::Connect(format!("{target} needs a token file")))?;
            let mut opts = RemoteOptions::from_token_file(token_file).map_err(|e| {
                GatewayError::Connect(format!("token file {}: {e}", token_file.display()))
            })?;
            if let Some(ca) = ca_file {
                opts = opts
                    .with_ca_file(ca)
                    .map_err(|e| GatewayError::Connect(format!("CA file {}: {e}", ca.display())))?;
            }
            return RemoteClient::connect(target, opts).map(|r| Self::Remote(Box::new(r)));
        }
        Client::connect(target)
            .map(Self::Local)
            .map_err(|e: ConnectError| GatewayError::Connect(e.to_string()))
    }

    /// Calls `M`, locally or through the gateway.
    ///
    /// ```no_run
    /// # fn demo(c: &cradle_client::Connection) -> Result<(), Box<dyn std::error::Error>> {
    /// let echo = c.call::<ipc_rpc::builtin::Ping>(&vec![1, 2])?;
    /// # Ok(()) }
    /// ```
    pub fn call<M: Method>(&self, req: &M::Request) -> Result<M::Response, GatewayError> {
        match self {
            Self::Local(c) => c.call::<M>(req).map_err(GatewayError::Call),
            Self::Remote(r) => r.call::<M>(req),
        }
    }

    /// The value under `key` (a local get copies it out of shared memory).
    ///
    /// ```no_run
    /// # fn demo(c: &cradle_client::Connection) -> Result<(), Box<dyn std::error::Error>> {
    /// let v = c.get("k")?;
    /// # Ok(()) }
    /// ```
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, GatewayError> {
        match self {
            Self::Local(c) => c
                .cache()
                .get(key)
                .map(|o| o.map(|b| b.to_vec()))
                .map_err(GatewayError::Blob),
            Self::Remote(r) => r.cache().get(key),
        }
    }

    /// Stores `bytes` under `key`.
    ///
    /// ```no_run
    /// # fn demo(c: &cradle_client::Connection) -> Result<(), Box<dyn std::error::Error>> {
    /// c.put("k", b"v")?;
    /// # Ok(()) }
    /// ```
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), GatewayError> {
        match self {
            Self::Local(c) => {
                let mut w = c.create(bytes.len()).map_err(GatewayError::Blob)?;
                w.write_at(0, bytes);
                let blob = w.seal().map_err(GatewayError::Blob)?;
                c.cache().put(key, &blob).map_err(GatewayError::Call)
            }
            Self::Remote(r) => r.cache().put(key, bytes),
        }
    }

    /// Removes `key`; whether it was there.
    ///
    /// ```no_run
    /// # fn demo(c: &cradle_client::Connection) -> Result<(), Box<dyn std::error::Error>> {
    /// c.remove("k")?;
    /// # Ok(()) }
    /// ```
    pub fn remove(&self, key: &str) -> Result<bool, GatewayError> {
        match self {
            Self::Local(c) => c.cache().remove(key).map_err(GatewayError::Call),
            Self::Remote(r) => r.cache().remove(key),
        }
    }
}
