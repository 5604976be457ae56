//! Handler erasure: a typed handler becomes a closure that decodes the
//! request, runs the user's function under `catch_unwind`, and encodes the
//! answer, straight into the response ring for inline handlers (through a
//! [`Replier`]) or into an owned buffer for offloaded ones. Every method, the
//! builtin and blob ones included, is wrapped here, so a panic or a request
//! that does not validate is answered the same way everywhere.

use super::registry::{Answer, InlineFn, OffloadFn};
use crate::blobs::BlobCtx;
use crate::error::HandlerError;
use crate::reply::{Replier, encode_answer};
use ipc_rpc::{ErrorCode, Method, Wire};
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// What a handler run produced, short of encoding.
pub(crate) type Outcome<R> = Result<R, (ErrorCode, String)>;

/// A user handler that takes a context, borrowed.
pub(crate) type WithCtx<'f, C, M> =
    &'f dyn Fn(&C, <M as Method>::Request) -> Result<<M as Method>::Response, HandlerError>;

/// Decodes the request and runs `f` with `ctx` under `catch_unwind`.
pub(crate) fn invoke_with<M, C>(f: WithCtx<'_, C, M>, ctx: &C, bytes: &[u8]) -> Outcome<M::Response>
where
    M: Method,
    C: ?Sized,
{
    let req = <M::Request as Wire>::decode(bytes).map_err(|e| {
        (
            ErrorCode::Malformed,
            format!("request for {} did not validate: {e}", M::NAME),
        )
    })?;
    match catch_unwind(AssertUnwindSafe(|| f(ctx, req))) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err((e.code, e.message)),
        Err(payload) => Err((
            ErrorCode::HandlerPanicked,
            format!(
                "the handler of {} panicked: {}",
                M::NAME,
                panic_message(payload.as_ref())
            ),
        )),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}

/// Erases an inline handler.
pub(crate) fn inline<M, F>(f: F) -> InlineFn
where
    M: Method,
    F: Fn(M::Request) -> Result<M::Response, HandlerError> + Send + Sync + 'static,
{
    inline_session::<M, _>(move |_: &Replier<'_>, r| f(r))
}

/// Erases an inline handler that needs its session: the session's id and
/// control socket, on which a method sends a descriptor just before the
/// answer that announces it (the blob methods).
pub(crate) fn inline_session<M, F>(f: F) -> InlineFn
where
    M: Method,
    F: Fn(&Replier<'_>, M::Request) -> Result<M::Response, HandlerError> + Send + Sync + 'static,
{
    Box::new(
        move |bytes, req, out| match invoke_with::<M, Replier<'_>>(&f, out, bytes) {
            Ok(resp) => out.respond(req, &resp),
            Err((code, message)) => out.error(req, code, message),
        },
    )
}

/// Erases an offloaded handler.
pub(crate) fn offload<M, F>(f: F) -> OffloadFn
where
    M: Method,
    F: Fn(M::Request) -> Result<M::Response, HandlerError> + Send + Sync + 'static,
{
    offload_blob::<M, _>(move |_: &BlobCtx<'_>, r| f(r))
}

/// Erases an offloaded handler that works with blobs.
pub(crate) fn offload_blob<M, F>(f: F) -> OffloadFn
where
    M: Method,
    F: Fn(&BlobCtx<'_>, M::Request) -> Result<M::Response, HandlerError> + Send + Sync + 'static,
{
    Arc::new(move |bytes, req, ctx, arena, max, _worker| {
        Answer::Now(encode_answer(
            req,
            invoke_with::<M, BlobCtx<'_>>(&f, ctx, bytes),
            arena,
            max,
        ))
    })
}
