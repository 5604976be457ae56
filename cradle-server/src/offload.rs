//! The offload pool: threads that run `Offload` handlers and hand the encoded
//! answer back to the session's worker, which publishes it by request id.

use crate::blobs::{BlobCtx, BlobStore};
use crate::link::{Completion, Job, WorkerLink, WorkerMsg};
use ipc_rpc::rkyv::ser::allocator::Arena;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

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
