//! Scraping a server's metrics endpoint (a Unix socket) during a
//! measurement: one `GET /metrics` at a time, every [`SCRAPE_EVERY`], each
//! answer checked to be a real exposition.

use ipc_core::sync::{AtomicBool, Ordering};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Time between two scrapes of the scraper: far more often than a
/// Prometheus server would (15 s by default), so that every block sees
/// several.
pub(crate) const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// One scrape; fails unless the answer is a 200 with the calls counter.
pub(crate) fn once(socket: &Path) -> Result<usize, String> {
    let fail = |e: std::io::Error| format!("scrape {}: {e}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: cradle\r\nConnection: close\r\n\r\n")
        .map_err(fail)?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(fail)?;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") || !text.contains("cradle_calls_total") {
        return Err(format!(
            "scrape {}: not a metrics answer: {}",
            socket.display(),
            text.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.len())
}

/// A thread scraping every [`SCRAPE_EVERY`] until stopped.
#[derive(Debug)]
pub(crate) struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64, String>>,
}

impl Scraper {
    /// Starts scraping `socket` at once.
    pub(crate) fn start(socket: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let socket: PathBuf = socket.to_owned();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            // Relaxed: a request to stop; nothing is published through it.
            while !flag.load(Ordering::Relaxed) {
                once(&socket)?;
                n += 1;
                std::thread::sleep(SCRAPE_EVERY);
            }
            Ok(n)
        });
        Self { stop, thread }
    }

    /// Stops the scraper; the number of scrapes it made.
    pub(crate) fn stop(self) -> Result<u64, String> {
        // Relaxed: see `start`.
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the scraper thread panicked".to_string())?
    }
}
