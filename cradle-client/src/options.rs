//! Client and call options, common to both clients.

use ipc_core::doorbell::WaitMode;
use std::time::Duration;

/// How long a call waits for its response unless told otherwise.
///
/// ```
/// assert_eq!(cradle_client::DEFAULT_TIMEOUT.as_secs(), 30);
/// ```
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of a client; [`Default`] gives a 30 s call timeout and
/// spin-then-sleep waits.
///
/// ```no_run
/// use cradle_client::{Client, ClientOptions, WaitMode};
/// use std::time::Duration;
///
/// let opts = ClientOptions {
///     timeout: Duration::from_secs(5),
///     wait: WaitMode::Sleep,
/// };
/// let client = Client::connect_with(cradle_client::default_socket_path(), opts)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Default deadline of a call, from its start.
    pub timeout: Duration,
    /// Default way to wait for a response or for ring space.
    pub wait: WaitMode,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            wait: WaitMode::default(),
        }
    }
}

/// Per-call options.
///
/// ```no_run
/// use cradle_client::{CallOptions, Client, WaitMode};
/// use ipc_rpc::builtin::Ping;
/// use std::time::Duration;
///
/// let client = Client::connect_default()?;
/// let opts = CallOptions { timeout: Duration::from_millis(100), wait: WaitMode::Spin };
/// client.call_opts::<Ping>(&vec![1], opts)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CallOptions {
    /// Deadline of this call, from its start.
    pub timeout: Duration,
    /// How this call waits.
    pub wait: WaitMode,
}

/// Options for a call that may take long on the server (a durable put, a
/// load from the disk tier): at least ten minutes, sleeping.
pub(crate) fn slow_call(timeout: Duration) -> CallOptions {
    CallOptions {
        timeout: timeout.max(Duration::from_secs(600)),
        wait: WaitMode::Sleep,
    }
}

/// How a call to a memoized method uses the server's memo
/// ([`Client::call_memo`](crate::Client::call_memo)).
///
/// ```
/// use cradle_client::MemoMode;
/// assert_eq!(MemoMode::default(), MemoMode::Use);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoMode {
    /// Answer from the memo if it has an entry; store the result if not.
    #[default]
    Use,
    /// Run the handler; neither read nor write the memo.
    Bypass,
    /// Run the handler and replace the memo's entry with its result.
    Refresh,
}

impl MemoMode {
    /// The request frame flags that say so.
    ///
    /// ```
    /// use cradle_client::MemoMode;
    /// assert_eq!(MemoMode::Bypass.flags(), ipc_rpc::wire::MEMO_BYPASS);
    /// ```
    pub fn flags(self) -> u16 {
        match self {
            Self::Use => ipc_rpc::wire::NO_FLAGS,
            Self::Bypass => ipc_rpc::wire::MEMO_BYPASS,
            Self::Refresh => ipc_rpc::wire::MEMO_REFRESH,
        }
    }
}
