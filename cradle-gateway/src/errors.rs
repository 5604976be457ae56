//! Local errors as gRPC statuses. The local error code travels too, in the
//! `cradle-error-code` metadata, so a remote client can give back the very
//! `CallError::Remote` a local one would have seen.

use cradle_client::{BlobError, CallError, ErrorCode};
use tonic::{Code, Status};

/// The metadata key carrying the local server's error code (a number).
pub(crate) const ERROR_CODE: &str = "cradle-error-code";

/// Whether `e` means the local session is gone (the next request must
/// connect again).
pub(crate) fn session_gone(e: &CallError) -> bool {
    matches!(
        e,
        CallError::PeerDead | CallError::Shutdown | CallError::Forked
    )
}

pub(crate) fn call_status(e: &CallError) -> Status {
    let msg = e.to_string();
    match e {
        CallError::PeerDead | CallError::Shutdown | CallError::Forked => {
            Status::unavailable(format!("the local CRADLE server is not answering: {msg}"))
        }
        CallError::Timeout(_) => Status::deadline_exceeded(msg),
        CallError::RingFull => Status::resource_exhausted(msg),
        CallError::MessageTooLarge { .. } => Status::invalid_argument(msg),
        CallError::Malformed(_) => Status::internal(msg),
        CallError::QuotaExceeded(_) => Status::resource_exhausted(msg),
        CallError::Encode(_) => Status::invalid_argument(msg),
        CallError::Remote { code, message } => {
            let grpc = match code {
                ErrorCode::UnknownMethod => Code::Unimplemented,
                ErrorCode::Malformed => Code::InvalidArgument,
                ErrorCode::QuotaExceeded | ErrorCode::CacheFull | ErrorCode::Busy => {
                    Code::ResourceExhausted
                }
                ErrorCode::ResponseTooLarge => Code::OutOfRange,
                ErrorCode::Shutdown | ErrorCode::ProviderGone => Code::Unavailable,
                ErrorCode::BadHandle | ErrorCode::SchemaMismatch => Code::FailedPrecondition,
                ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
                ErrorCode::Refused => Code::PermissionDenied,
                _ => Code::Unknown,
            };
            let mut s = Status::new(grpc, message.clone());
            if let Ok(v) = code.to_u32().to_string().parse() {
                s.metadata_mut().insert(ERROR_CODE, v);
            }
            s
        }
        _ => Status::unknown(msg),
    }
}

pub(crate) fn blob_status(e: &BlobError) -> Status {
    match e.call() {
        Some(c) => call_status(c),
        None => Status::internal(format!("local blob operation failed: {e}")),
    }
}
