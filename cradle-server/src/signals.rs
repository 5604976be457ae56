//! Running a server the way the `cradle-server` binary does: a default log
//! subscriber, and a run that stops cleanly on SIGINT or SIGTERM.

use crate::error::ServerError;
use crate::server::{Server, ServerHandle};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Installs a log subscriber on stderr at `level` (`error`, `warn`, `info`,
/// `debug` or `trace`; `RUST_LOG`, when set and valid, wins), with colours
/// only on a terminal. Does nothing if the process already has a global
/// subscriber, so a library user's own choice stands.
///
/// ```
/// cradle_server::init_logging("warn");
/// tracing::warn!("shown on stderr");
/// tracing::info!("not shown");
/// ```
pub fn init_logging(level: &str) {
    init_logging_as(level, LogFormat::Text);
}

/// How log lines are written.
///
/// ```
/// use cradle_server::LogFormat;
/// let f: LogFormat = "json".parse()?;
/// assert_eq!(f, LogFormat::Json);
/// assert_eq!(LogFormat::default(), LogFormat::Text);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`,
    /// and the enclosing spans), for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format {s:?}: use text or json")),
        }
    }
}

/// Like [`init_logging`], in the chosen format.
///
/// ```
/// use cradle_server::{LogFormat, init_logging_as};
/// init_logging_as("info", LogFormat::Json);
/// tracing::info!(session = 3, "a JSON line on stderr");
/// ```
pub fn init_logging_as(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var_os("RUST_LOG") {
        Some(v) if !v.is_empty() => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
        }
        _ => EnvFilter::new(level),
    };
    // `try_init`: a second call, or an application's own subscriber, wins.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => fmt.json().with_current_span(true).try_init(),
    };
}

impl Server {
    /// Serves like [`run`](Self::run) until SIGINT (Ctrl-C) or SIGTERM, or
    /// until [`ServerHandle::shutdown`]; then says goodbye to every session,
    /// writes the disk tier's queued puts, removes the socket file and
    /// returns. The signal handler is process-wide and only wakes a thread
    /// of this server, so it works whichever thread the signal lands on;
    /// it is removed again before this returns.
    ///
    /// A complete custom server:
    ///
    /// ```no_run
    /// cradle_server::init_logging("info");
    /// let server = cradle_server::Server::builder().bind()?;
    /// server.run_until_signal()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_until_signal(self) -> Result<(), ServerError> {
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Spawn)?;
        let closer = signals.handle();
        let handle: ServerHandle = self.handle();
        let watcher = std::thread::Builder::new()
            .name("cradle-signals".into())
            .spawn(move || {
                // Ends when a signal arrives or `closer.close()` is called.
                if let Some(sig) = signals.forever().next() {
                    let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                    tracing::info!(signal = name, "shutting down");
                    handle.shutdown();
                }
            })
            .map_err(ServerError::Spawn)?;
        tracing::info!(
            socket = %self.socket_path().display(),
            pid = std::process::id(),
            memory_cache = %bytesize::ByteSize(self.cache_budget()).display().iec(),
            disk_cache = %self.disk_cache_dir().map_or("none".into(), |d| d.display().to_string()),
            "cradle-server ready"
        );
        let result = self.run();
        closer.close();
        let _ = watcher.join();
        result
    }
}
