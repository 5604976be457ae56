//! The reply path of a session: answers go straight into the response ring
//! while it has room, else into the session's backlog, oldest first; and the
//! encoding of ERROR and RESPONSE frames that every handler shares.

use ipc_core::ring::{FrameMeta, RingError, RingRegion};
use ipc_rpc::rkyv::ser::allocator::Arena;
use ipc_rpc::rkyv::util::AlignedVec;
use ipc_rpc::{ErrorCode, Outbox, RemoteError, SendError, Wire, wire};
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

/// Longest error message sent to a client, in bytes.
const MAX_ERROR_MESSAGE: usize = 1024;

/// A response waiting for room in the response ring.
pub(crate) type Queued = (FrameMeta, AlignedVec<16>);

/// `message` cut to at most [`MAX_ERROR_MESSAGE`] bytes on a char boundary.
fn truncated(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// The header of an ERROR frame answering `req`: same request id, the
/// method id as tag (0 for an unknown method, per `ipc_rpc::wire`).
fn error_meta(req: FrameMeta, code: ErrorCode) -> FrameMeta {
    FrameMeta {
        request_id: req.request_id,
        tag: if code == ErrorCode::UnknownMethod {
            0
        } else {
            req.tag
        },
        kind: wire::ERROR,
        flags: wire::NO_FLAGS,
    }
}

/// The header of a RESPONSE frame answering `req`.
fn response_meta(req: FrameMeta) -> FrameMeta {
    FrameMeta {
        request_id: req.request_id,
        tag: req.tag,
        kind: wire::RESPONSE,
        flags: wire::NO_FLAGS,
    }
}

/// The error code and message for a response that could not be encoded.
fn unsendable(e: &SendError) -> (ErrorCode, String) {
    match e {
        SendError::TooLarge { max, .. } => (
            ErrorCode::ResponseTooLarge,
            format!(
                "the response does not fit in one frame (at most {max} bytes); return large data as a blob"
            ),
        ),
        other => (
            ErrorCode::Handler,
            format!("the server could not encode the response: {other}"),
        ),
    }
}

/// The encoded answer of an offloaded call: a RESPONSE frame carrying the
/// handler's value, or an ERROR frame (also when the value does not fit);
/// `None` if not even that fits the ring.
pub(crate) fn encode_answer<T: Wire>(
    req: FrameMeta,
    outcome: Result<T, (ErrorCode, String)>,
    arena: &mut Arena,
    max: usize,
) -> Option<Queued> {
    let (code, message) = match outcome {
        Ok(value) => match ipc_rpc::encode_to_vec(&value, arena, max) {
            Ok(v) => return Some((response_meta(req), v)),
            Err(e) => unsendable(&e),
        },
        Err(failure) => failure,
    };
    encode_error(req, code, message, arena, max)
}

/// An encoded ERROR frame, or `None` if even that does not fit the ring.
pub(crate) fn encode_error(
    req: FrameMeta,
    code: ErrorCode,
    message: String,
    arena: &mut Arena,
    max: usize,
) -> Option<Queued> {
    let err = RemoteError {
        code: code.to_u32(),
        message: truncated(message),
    };
    match ipc_rpc::encode_to_vec(&err, arena, max) {
        Ok(v) => Some((error_meta(req, code), v)),
        Err(e) => {
            tracing::warn!(request_id = req.request_id, error = %e, "error response dropped: it does not fit the ring");
            None
        }
    }
}

/// The reply path of one session during one round: the response ring, and
/// the session's backlog for responses that find the ring full.
///
/// Responses go straight into the ring while the backlog is empty; once one
/// is queued, later ones queue behind it until the backlog drains.
pub(crate) struct Replier<'a> {
    /// The session answered.
    pub(crate) session: u64,
    /// Its control socket (descriptors go there, just before the answer
    /// that announces them).
    pub(crate) sock: BorrowedFd<'a>,
    pub(crate) outbox: &'a mut Outbox<RingRegion>,
    pub(crate) backlog: &'a mut VecDeque<Queued>,
    /// A frame was published since the last data doorbell ring.
    pub(crate) published: bool,
    /// The response ring is unusable (the client corrupted its `head`).
    pub(crate) broken: Option<RingError>,
    /// Calls answered (responses and errors queued or published).
    pub(crate) answered: u64,
    /// The wire code of the last error answer (0: none), for the metrics.
    pub(crate) last_error: u32,
}

impl<'a> Replier<'a> {
    /// A replier over a session's outbox and backlog, nothing sent yet.
    pub(crate) fn new(
        session: u64,
        sock: BorrowedFd<'a>,
        outbox: &'a mut Outbox<RingRegion>,
        backlog: &'a mut VecDeque<Queued>,
    ) -> Self {
        Self {
            session,
            sock,
            outbox,
            backlog,
            published: false,
            broken: None,
            answered: 0,
            last_error: 0,
        }
    }
}

impl std::fmt::Debug for Replier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replier")
            .field("backlog", &self.backlog.len())
            .field("published", &self.published)
            .finish()
    }
}

impl Replier<'_> {
    /// Sends `value` in a frame with `meta`, or queues it.
    fn send<T: Wire>(&mut self, meta: FrameMeta, value: &T) -> Result<(), (ErrorCode, String)> {
        if self.broken.is_some() {
            return Ok(());
        }
        if self.backlog.is_empty() {
            match self.outbox.try_send(meta, value) {
                Ok(()) => {
                    self.published = true;
                    return Ok(());
                }
                Err(SendError::Full { .. }) => {}
                Err(SendError::Ring(e)) => {
                    self.broken = Some(e);
                    return Ok(());
                }
                Err(e) => return Err(unsendable(&e)),
            }
        }
        match self.outbox.encode_to_vec(value) {
            Ok(bytes) => {
                self.backlog.push_back((meta, bytes));
                Ok(())
            }
            Err(e) => Err(unsendable(&e)),
        }
    }

    /// Answers `req` with a RESPONSE frame carrying `value`.
    pub(crate) fn respond<T: Wire>(&mut self, req: FrameMeta, value: &T) {
        self.answered += 1;
        if let Err((code, message)) = self.send(response_meta(req), value) {
            self.send_error(req, code, message);
        }
    }

    /// Answers `req` with an ERROR frame.
    pub(crate) fn error(&mut self, req: FrameMeta, code: ErrorCode, message: String) {
        self.answered += 1;
        self.send_error(req, code, message);
    }

    fn send_error(&mut self, req: FrameMeta, code: ErrorCode, message: String) {
        self.last_error = code.to_u32();
        let err = RemoteError {
            code: code.to_u32(),
            message: truncated(message),
        };
        if let Err((_, why)) = self.send(error_meta(req, code), &err) {
            tracing::warn!(request_id = req.request_id, error = %why, "error response dropped");
        }
    }

    /// Answers `req` with `bytes` as the RESPONSE payload, unchanged: for a
    /// method whose request and response types are the same (`Ping`), a
    /// validated request archive is a valid response archive (rkyv archives
    /// are relocatable). No allocation unless the frame must be queued.
    pub(crate) fn echo(&mut self, req: FrameMeta, bytes: &[u8]) {
        if let Err(e) = self.send_borrowed(response_meta(req), bytes) {
            self.error(req, ErrorCode::ResponseTooLarge, e.to_string());
        }
    }

    /// Sends the encoded frame `bytes`, copied into the ring, or queued
    /// (copied then) if the ring has no room.
    pub(crate) fn send_slice(&mut self, meta: FrameMeta, bytes: &[u8]) {
        if let Err(e) = self.send_borrowed(meta, bytes) {
            self.answered += 1;
            tracing::warn!(request_id = meta.request_id, error = %e, "response dropped");
        }
    }

    /// `bytes` straight into the ring, or queued (copied then) behind
    /// others or for want of room; counted as answered. A frame that can
    /// never fit is the error (not counted: the caller answers for it).
    fn send_borrowed(&mut self, meta: FrameMeta, bytes: &[u8]) -> Result<(), SendError> {
        if self.backlog.is_empty() && self.broken.is_none() {
            match self.outbox.try_send_encoded(meta, bytes) {
                Ok(()) => {
                    self.answered += 1;
                    self.published = true;
                    return Ok(());
                }
                Err(SendError::Full { .. }) => {}
                Err(SendError::Ring(e)) => {
                    self.answered += 1;
                    self.broken = Some(e);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        self.send_encoded(meta, copy);
        Ok(())
    }

    /// Sends an already-encoded frame (an offload completion), or queues it.
    pub(crate) fn send_encoded(&mut self, meta: FrameMeta, bytes: AlignedVec<16>) {
        self.answered += 1;
        if self.broken.is_some() {
            return;
        }
        if self.backlog.is_empty() {
            match self.outbox.try_send_encoded(meta, &bytes) {
                Ok(()) => {
                    self.published = true;
                    return;
                }
                Err(SendError::Full { .. }) => {}
                Err(SendError::Ring(e)) => {
                    self.broken = Some(e);
                    return;
                }
                Err(e) => {
                    // Encoded against the same limit: cannot happen.
                    tracing::warn!(request_id = meta.request_id, error = %e, "response dropped");
                    return;
                }
            }
        }
        self.backlog.push_back((meta, bytes));
    }

    /// Publishes queued responses, oldest first, while they fit. Returns
    /// whether any was published.
    pub(crate) fn flush(&mut self) -> bool {
        let mut any = false;
        while self.broken.is_none() {
            let Some((meta, bytes)) = self.backlog.front() else {
                break;
            };
            match self.outbox.try_send_encoded(*meta, bytes) {
                Ok(()) => {
                    self.backlog.pop_front();
                    self.published = true;
                    any = true;
                }
                Err(SendError::Full { .. }) => break,
                Err(SendError::Ring(e)) => self.broken = Some(e),
                Err(e) => {
                    tracing::warn!(request_id = meta.request_id, error = %e, "queued response dropped");
                    self.backlog.pop_front();
                }
            }
        }
        any
    }
}
