//! The gateway's session with the local server, connected on demand and
//! again after the server went away, and what it holds for remote callers:
//! blobs staged by digest (uploads and call results not stored yet) and the
//! index from digests to cache keys.
//!
//! Everything here belongs to one session: when the server dies, the
//! session, its leases, its staged blobs and its index go together, and the
//! next request connects a new one with empty tables (handles of a dead
//! server mean nothing to the next).

use crate::errors::{blob_status, call_status, session_gone};
use crate::stats::Counters;
use cradle_client::{AsyncClient, BlobRef, CallError, ClientOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Status;

/// A BLAKE3 digest with the blob's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Digest {
    pub(crate) hash: [u8; 32],
    pub(crate) size: u64,
}

impl Digest {
    pub(crate) fn from_proto(d: Option<&cradle_proto::v1::Digest>) -> Result<Self, Status> {
        let d = d.ok_or_else(|| Status::invalid_argument("a digest is missing"))?;
        let hash: [u8; 32] = d.blake3.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "a digest has {} bytes; BLAKE3 has 32",
                d.blake3.len()
            ))
        })?;
        Ok(Self { hash, size: d.size })
    }

    pub(crate) fn to_proto(self) -> cradle_proto::v1::Digest {
        cradle_proto::v1::Digest {
            blake3: self.hash.to_vec(),
            size: self.size,
        }
    }

    pub(crate) fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }
}

/// A blob the gateway holds a lease on, by digest.
struct Staged {
    blob: Arc<BlobRef>,
    at: Instant,
}

/// Digests the gateway can name: staged blobs, and cache keys known to
/// hold a given blob (checked by blob id when used: a key may have been
/// replaced since).
#[derive(Default)]
pub(crate) struct Store {
    staged: HashMap<Digest, Staged>,
    staged_bytes: u64,
    keyed: HashMap<Digest, (String, u64)>,
    /// The same, by key: the digest of the blob a key held when the
    /// gateway last saw it, with that blob's id.
    by_key: HashMap<String, (Digest, u64)>,
}

/// One session with the local server and the tables that live with it.
pub(crate) struct Conn {
    pub(crate) client: AsyncClient,
    store: Mutex<Store>,
}

/// Limits of the staging area.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StageLimits {
    pub(crate) bytes: u64,
    pub(crate) ttl: Duration,
}

impl Conn {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `blob` under `d` (nothing changes if it is staged already),
    /// then drops other staged blobs older than the time limit, and the
    /// oldest others while the bytes exceed the limit.
    pub(crate) fn stage(&self, d: Digest, blob: Arc<BlobRef>, limits: StageLimits) {
        let mut s = self.store();
        if !s.staged.contains_key(&d) {
            s.staged_bytes += d.size;
            let at = Instant::now();
            s.staged.insert(d, Staged { blob, at });
        }
        let now = Instant::now();
        let expired: Vec<Digest> = s
            .staged
            .iter()
            .filter(|(k, e)| **k != d && now.duration_since(e.at) > limits.ttl)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            s.staged.remove(&k);
            s.staged_bytes -= k.size;
        }
        while s.staged_bytes > limits.bytes {
            let Some(oldest) = s
                .staged
                .iter()
                .filter(|(k, _)| **k != d)
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| *k)
            else {
                break;
            };
            s.staged.remove(&oldest);
            s.staged_bytes -= oldest.size;
        }
    }

    /// Stops holding a staged blob (it is in the cache now).
    pub(crate) fn unstage(&self, d: &Digest) {
        let mut s = self.store();
        if s.staged.remove(d).is_some() {
            s.staged_bytes -= d.size;
        }
    }

    /// Records that `key` holds the blob of `d` with id `blob_id`.
    pub(crate) fn index(&self, d: Digest, key: &str, blob_id: u64) {
        let mut s = self.store();
        s.keyed.insert(d, (key.to_owned(), blob_id));
        s.by_key.insert(key.to_owned(), (d, blob_id));
    }

    /// The digest of the blob with id `blob_id` under `key`, if the
    /// gateway has hashed it before (a sealed blob never changes, so the
    /// same id means the same bytes).
    pub(crate) fn known_digest(&self, key: &str, blob_id: u64) -> Option<Digest> {
        match self.store().by_key.get(key) {
            Some((d, id)) if *id == blob_id => Some(*d),
            _ => None,
        }
    }

    /// Staged blobs and their bytes.
    pub(crate) fn staged(&self) -> (u64, u64) {
        let s = self.store();
        (s.staged.len() as u64, s.staged_bytes)
    }

    /// The blob of `d`, leased: a staged one, or the cache entry the index
    /// names if it still holds the same blob. `None`: the gateway cannot
    /// name it (upload it).
    pub(crate) async fn resolve(
        &self,
        d: &Digest,
    ) -> Result<Option<Arc<BlobRef>>, cradle_client::BlobError> {
        let keyed = {
            let s = self.store();
            if let Some(e) = s.staged.get(d) {
                return Ok(Some(e.blob.clone()));
            }
            s.keyed.get(d).cloned()
        };
        let Some((key, id)) = keyed else {
            return Ok(None);
        };
        match self.client.cache().get(&key).await {
            Ok(Some(b)) if b.handle().id == id && b.len() as u64 == d.size => Ok(Some(Arc::new(b))),
            Ok(_) => {
                let mut s = self.store();
                if s.keyed.get(d).is_some_and(|(k, i)| *k == key && *i == id) {
                    s.keyed.remove(d);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The local server, connected on demand.
pub(crate) struct Local {
    socket: PathBuf,
    timeout: Duration,
    wait: cradle_client::WaitMode,
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    counters: Arc<Counters>,
}

impl Local {
    pub(crate) fn new(
        socket: PathBuf,
        timeout: Duration,
        wait: cradle_client::WaitMode,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            socket,
            timeout,
            wait,
            current: tokio::sync::Mutex::new(None),
            counters,
        }
    }

    /// The current session, or a new one; `UNAVAILABLE` at once when no
    /// server answers on the socket.
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>, Status> {
        let mut cur = self.current.lock().await;
        if let Some(c) = &*cur {
            return Ok(c.clone());
        }
        let opts = ClientOptions {
            timeout: self.timeout,
            wait: self.wait,
        };
        let connect = AsyncClient::connect_with(&self.socket, opts);
        let client = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!("no local CRADLE server: {e}")));
            }
            Err(_) => {
                return Err(Status::unavailable(
                    "the local CRADLE server did not complete a handshake within 5 s",
                ));
            }
        };
        self.counters.bump(&self.counters.local_connects, 1);
        tracing::info!(socket = %self.socket.display(), session = client.session_id(), "connected to the local server");
        let conn = Arc::new(Conn {
            client,
            store: Mutex::new(Store::default()),
        });
        *cur = Some(conn.clone());
        Ok(conn)
    }

    /// The status of a failed local call; a dead session is forgotten, so
    /// the next request connects again.
    pub(crate) async fn failed(&self, conn: &Arc<Conn>, e: &CallError) -> Status {
        if session_gone(e) {
            let mut cur = self.current.lock().await;
            if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                tracing::warn!("the local server went away: {e}");
                *cur = None;
            }
        }
        call_status(e)
    }

    /// As [`failed`](Self::failed), for a blob operation.
    pub(crate) async fn blob_failed(
        &self,
        conn: &Arc<Conn>,
        e: &cradle_client::BlobError,
    ) -> Status {
        match e.call() {
            Some(c) => self.failed(conn, c).await,
            None => blob_status(e),
        }
    }

    /// The session open now, if any (never connects).
    pub(crate) async fn current(&self) -> Option<Arc<Conn>> {
        self.current.lock().await.clone()
    }

    /// Whether a session is open now (not checked against the server).
    pub(crate) async fn is_up(&self) -> bool {
        self.current.lock().await.is_some()
    }
}
