//! What the server's threads hand each other: the acceptor gives sessions to
//! workers, workers give jobs to the offload pool, the pool gives answers
//! back, and the [`ServerHandle`](crate::ServerHandle) reaches them all
//! through [`HandleInner`]. Every other server file builds on these types;
//! this one depends only on the method registry's handler type and the reply
//! path's queued frame.

use crate::methods::OffloadFn;
use crate::reply::Queued;
use crate::stats::SessionCounters;
use ipc_core::doorbell::{EventFd, Futex, WakeSocket, Waker};
use ipc_core::ring::{FrameMeta, RingRegion};
use ipc_core::shm::Segment;
use ipc_core::sync::{AtomicBool, Atomics, StdAtomics};
use ipc_rpc::handshake::{GOODBYE_MAGIC, Goodbye, send_pod};
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::{Inbox, Outbox};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

/// State the [`ServerHandle`], the acceptor and the workers share.
#[derive(Debug)]
pub(crate) struct HandleInner {
    /// Set once by `shutdown`.
    pub(crate) shutdown: AtomicBool,
    /// Wakes the acceptor.
    pub(crate) acceptor_bell: EventFd,
    /// The workers' channels and control eventfds.
    pub(crate) links: Arc<[WorkerLink]>,
}

/// A message to a worker; sent with [`WorkerLink::send`].
#[derive(Debug)]
pub(crate) enum WorkerMsg {
    /// A session the acceptor created for this worker.
    Session(Box<NewSession>),
    /// An offloaded call is answered.
    Completion(Completion),
}

/// The way to a worker: its channel and the eventfd that wakes it.
#[derive(Debug)]
pub(crate) struct WorkerLink {
    tx: Sender<WorkerMsg>,
    pub(crate) bell: EventFd,
}

impl WorkerLink {
    /// A link and the worker's receiving end.
    pub(crate) fn new() -> std::io::Result<(Self, Receiver<WorkerMsg>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        Ok((
            Self {
                tx,
                bell: EventFd::new()?,
            },
            rx,
        ))
    }

    /// Sends `msg` and wakes the worker (always: the worker may be polling,
    /// but a message must never wait for a session's traffic).
    pub(crate) fn send(&self, msg: WorkerMsg) {
        match self.tx.send(msg) {
            Ok(()) => self.wake(),
            // The worker has stopped (the server shuts down): the client of a
            // session it never adopted hears so, rather than a hang-up.
            Err(std::sync::mpsc::SendError(WorkerMsg::Session(n))) => say_goodbye(&n.sock),
            Err(_) => {}
        }
    }

    /// Wakes the worker.
    pub(crate) fn wake(&self) {
        if let Err(e) = self.bell.notify() {
            tracing::error!(error = %e, "cannot wake a worker");
        }
    }
}

/// Sends the clean-shutdown [`Goodbye`] on a session's control socket
/// (non-blocking: the socket's file description is ours alone).
pub(crate) fn say_goodbye(sock: &OwnedFd) {
    let bye = Goodbye {
        magic: GOODBYE_MAGIC,
        reason: 0,
    };
    let _ = send_pod(sock, &bye);
}

/// Everything a worker needs to adopt a session.
#[derive(Debug)]
pub(crate) struct NewSession {
    pub(crate) id: u64,
    pub(crate) sock: OwnedFd,
    pub(crate) bell: EventFd,
    pub(crate) waker: ClientWaker,
    pub(crate) segment: Segment,
    pub(crate) inbox: Inbox<RingRegion>,
    pub(crate) outbox: Outbox<RingRegion>,
    pub(crate) counters: Arc<SessionCounters>,
}

/// How the server wakes a sleeping client of a session: a futex wake on the
/// session's word (sync clients), or a write to our end of the socketpair
/// whose other end the client sleeps on (async clients, `HELLO_WAKE_EVENTFD`).
/// Never a descriptor whose file description the client shares: it could
/// make our write block (see [`WakeSocket`]).
#[derive(Debug)]
pub(crate) enum ClientWaker {
    /// `FUTEX_WAKE` on the doorbell's `seq` word.
    Futex,
    /// Send 8 bytes on our end of the client's wake socketpair.
    Socket(WakeSocket),
}

impl Waker<StdAtomics> for ClientWaker {
    fn wake(&self, seq: &<StdAtomics as Atomics>::U32) {
        match self {
            Self::Futex => Waker::<StdAtomics>::wake(&Futex, seq),
            Self::Socket(w) => Waker::<StdAtomics>::wake(w, seq),
        }
    }
}

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
