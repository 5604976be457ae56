//! The bearer token: read from `--token-file`, or generated there (mode
//! 0600, 32 random bytes in hex) at first start; checked by an interceptor
//! before any handler runs.

use crate::stats::Counters;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Status};

/// The token in `path`, created with 32 random bytes (64 hex digits) and
/// mode 0600 if the file does not exist. A token file that others may read
/// (any group or other permission bit) is refused.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("cradle-token-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("token");
/// let (token, created) = cradle_gateway::load_or_create_token(&path)?;
/// assert!(created && token.len() == 64);
/// assert_eq!(cradle_gateway::load_or_create_token(&path)?, (token, false));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn load_or_create_token(path: &Path) -> io::Result<(String, bool)> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            let mut raw = [0u8; 32];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            f.write_all(token.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            Ok((token, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(path)?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "token file {} is readable by others (mode {:o}); chmod 600 it",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ),
                ));
            }
            let token = std::fs::read_to_string(path)?.trim().to_owned();
            if token.len() < 16 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "token file {} holds fewer than 16 characters",
                        path.display()
                    ),
                ));
            }
            Ok((token, false))
        }
        Err(e) => Err(e),
    }
}

/// The interceptor that refuses a request without the right bearer token
/// with `UNAUTHENTICATED`, before the service sees it. Tokens are compared
/// through their BLAKE3 hashes, whose equality is constant-time.
#[derive(Clone)]
pub(crate) struct CheckToken {
    want: blake3::Hash,
    counters: Arc<Counters>,
}

impl CheckToken {
    pub(crate) fn new(token: &str, counters: Arc<Counters>) -> Self {
        Self {
            want: blake3::hash(token.as_bytes()),
            counters,
        }
    }
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req
            .metadata()
            .get(cradle_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if blake3::hash(t.trim().as_bytes()) == self.want => Ok(req),
            Some(_) => {
                self.counters.bump(&self.counters.unauthenticated, 1);
                tracing::warn!(peer = ?req.remote_addr(), "refused: wrong token");
                Err(Status::unauthenticated("wrong token"))
            }
            None => {
                self.counters.bump(&self.counters.unauthenticated, 1);
                tracing::warn!(peer = ?req.remote_addr(), "refused: no token");
                Err(Status::unauthenticated(
                    "no token: send `authorization: Bearer <token>`",
                ))
            }
        }
    }
}
