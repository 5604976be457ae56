//! The offload pool: threads that run `Offload` handlers and hand the encoded
//! answer back to the session's worker, which publishes it by request id.

use crate::blobs::{BlobCtx, BlobStore};
use crate::handlers::{OffloadFn, Queued};
use crate::worker::{WorkerLink, WorkerMsg};
use ipc_core::ring::FrameMeta;
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::rkyv::util::AlignedVec;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

/// A request taken by a worker for the pool.
pub(crate) struct Job {
    /// Index of the worker that owns the session.
    pub(crate) worker: usize,
    /// The session.
    pub(crate) session: u64,
    /// The request's header.
    pub(crate) meta: FrameMeta,
    /// A private copy of the request payload.
    pub(crate) bytes: AlignedVec<16>,
    /// The handler.
    pub(crate) handler: OffloadFn,
    /// The response ring's payload limit.
    pub(crate) max_payload: usize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("session", &self.session)
            .field("meta", &self.meta)
            .finish()
    }
}

/// The answer to a [`Job`], for its worker.
#[derive(Debug)]
pub(crate) struct Completion {
    /// The session.
    pub(crate) session: u64,
    /// The encoded answer (`None`: nothing fits the ring; the call still
    /// counts as done).
    pub(crate) answer: Option<Queued>,
}

/// Starts `threads` pool threads; they stop once every `Sender<Job>` is gone.
pub(crate) fn spawn_pool(
    threads: usize,
    links: Arc<[WorkerLink]>,
    store: Arc<BlobStore>,
) -> std::io::Result<Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        let links = Arc::clone(&links);
        let store = Arc::clone(&store);
        std::thread::Builder::new()
            .name(format!("cradle-offload-{i}"))
            .spawn(move || pool_thread(&rx, &links, &store))?;
    }
    Ok(tx)
}

fn pool_thread(rx: &Mutex<Receiver<Job>>, links: &[WorkerLink], store: &Arc<BlobStore>) {
    let mut arena = Arena::new();
    loop {
        // The lock is held only while taking one job. A poisoned lock (a
        // panic in `recv`, which does not happen) is still usable.
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // The handler catches panics of the user's function itself.
        let ctx = BlobCtx {
            store,
            session: job.session,
        };
        let answer = (job.handler)(&job.bytes, job.meta, &ctx, &mut arena, job.max_payload);
        if let Some(link) = links.get(job.worker) {
            link.send(WorkerMsg::Completion(Completion {
                session: job.session,
                answer,
            }));
        }
    }
}
