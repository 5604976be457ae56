//! The offload pool: threads that run `Offload` handlers and hand the encoded
//! answer back to the session's worker, which publishes it by request id.

use crate::blobs::{BlobCtx, BlobStore};
use crate::link::{Completion, Job, WorkerLink, WorkerMsg};
use crate::methods::Answer;
use crate::metrics::cells::CallCells;
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::{ErrorCode, RemoteError, Wire, wire};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Starts `threads` pool threads; they stop once every `Sender<Job>` is gone.
pub(crate) fn spawn_pool(
    threads: usize,
    links: Arc<[WorkerLink]>,
    store: Arc<BlobStore>,
    calls: Option<Arc<CallCells>>,
) -> std::io::Result<Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        let links = Arc::clone(&links);
        let store = Arc::clone(&store);
        let calls = calls.clone();
        std::thread::Builder::new()
            .name(format!("cradle-offload-{i}"))
            .spawn(move || pool_thread(&rx, &links, &store, calls.as_deref()))?;
    }
    Ok(tx)
}

fn pool_thread(
    rx: &Mutex<Receiver<Job>>,
    links: &[WorkerLink],
    store: &Arc<BlobStore>,
    calls: Option<&CallCells>,
) {
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
        let started = calls.map(|_| std::time::Instant::now());
        let answer = match (job.handler)(
            &job.bytes,
            job.meta,
            &ctx,
            &mut arena,
            job.max_payload,
            job.worker,
        ) {
            Answer::Now(answer) => answer,
            // Answered later by whoever ends its wait (a memoized call
            // behind an identical one, a claim behind another caller's).
            Answer::Later => continue,
        };
        if let (Some(calls), Some(started)) = (calls, started) {
            calls.record_shared(
                job.meta.tag,
                answer_code(answer.as_ref()),
                started.elapsed(),
            );
        }
        if let Some(link) = links.get(job.worker) {
            link.send(WorkerMsg::Completion(Completion {
                session: job.session,
                answer,
            }));
        }
    }
}

/// The wire error code of an encoded answer (0: a response).
fn answer_code(answer: Option<&crate::reply::Queued>) -> u32 {
    match answer {
        None => ErrorCode::ResponseTooLarge.to_u32(),
        Some((meta, _)) if meta.kind != wire::ERROR => 0,
        Some((_, bytes)) => {
            RemoteError::decode(bytes).map_or(ErrorCode::Other(0).to_u32(), |e| e.code)
        }
    }
}
