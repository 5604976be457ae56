//! `cradle-gateway`: serves a local CRADLE server over gRPC (see the
//! library's docs and docs/operations.md "The gateway").

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Serves the local CRADLE server's calls, cache and blobs to other
/// machines over gRPC, with TLS (rustls) and a bearer token.
///
/// Remote callers use `cradle --remote cradle+https://HOST:PORT --token-file F`
/// or `cradle_client::RemoteClient`. Without --tls-cert/--tls-key the
/// gateway serves plain text and only on a loopback address. The gRPC
/// health service (grpc.health.v1) answers without a token and reports
/// NOT_SERVING while the local server is down.
#[derive(Debug, Parser)]
#[command(name = "cradle-gateway", version)]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is
    /// printed on standard output).
    #[arg(long, default_value = "127.0.0.1:7443", env = "CRADLE_GATEWAY_LISTEN")]
    listen: SocketAddr,
    /// The local server's socket [default: CRADLE_SOCKET, else the server's default path].
    #[arg(long, env = "CRADLE_SOCKET")]
    socket: Option<PathBuf>,
    /// TLS certificate chain (PEM). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM). Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The bearer token remote callers must send; generated (64 hex digits,
    /// mode 0600) if the file does not exist. A file others can read is refused.
    #[arg(long)]
    token_file: PathBuf,
    /// The largest gRPC message either way, in bytes (blobs travel in 1 MiB chunks).
    #[arg(long, default_value_t = 4 << 20)]
    max_message_bytes: usize,
    /// Concurrent streams (calls and transfers) per connection.
    #[arg(long, default_value_t = 64)]
    max_concurrent_streams: u32,
    /// The largest blob one upload may carry, in bytes.
    #[arg(long, default_value_t = 16 << 30)]
    max_blob_bytes: u64,
    /// Bytes of uploads in progress on one connection, together.
    #[arg(long, default_value_t = 16 << 30)]
    max_upload_bytes_per_connection: u64,
    /// Bytes of staged blobs (uploaded, or returned by calls, and not yet
    /// stored under a key) the gateway holds leases on, all callers together.
    #[arg(long, default_value_t = 4 << 30)]
    staging_bytes: u64,
    /// Seconds a staged blob is kept.
    #[arg(long, default_value_t = 600)]
    staging_ttl_secs: u64,
    /// Longest deadline of a forwarded call, in seconds.
    #[arg(long, default_value_t = 30)]
    call_timeout_secs: u64,
    /// How the gateway waits for the local server's answers: spin (lowest
    /// latency, burns a core while waiting), sleep (no spinning: frees the
    /// runtime's threads), or spin-then-sleep (50 µs, then sleep).
    #[arg(long, value_enum, default_value_t = LocalWait::SpinThenSleep)]
    local_wait: LocalWait,
    /// Log filter (tracing's env-filter syntax; RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LocalWait {
    Spin,
    Sleep,
    SpinThenSleep,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut config = cradle_gateway::Config::new(
        args.socket
            .clone()
            .unwrap_or_else(cradle_client::default_socket_path),
        args.token_file.clone(),
    );
    config.listen = args.listen;
    config.tls = args.tls_cert.clone().zip(args.tls_key.clone());
    config.max_message_bytes = args.max_message_bytes;
    config.max_concurrent_streams = args.max_concurrent_streams;
    config.max_blob_bytes = args.max_blob_bytes;
    config.max_upload_bytes_per_connection = args.max_upload_bytes_per_connection;
    config.staging_bytes = args.staging_bytes;
    config.staging_ttl = Duration::from_secs(args.staging_ttl_secs);
    config.call_timeout = Duration::from_secs(args.call_timeout_secs);
    config.local_wait = match args.local_wait {
        LocalWait::Spin => cradle_client::WaitMode::Spin,
        LocalWait::Sleep => cradle_client::WaitMode::Sleep,
        LocalWait::SpinThenSleep => cradle_client::WaitMode::default(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cradle-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        let gw = cradle_gateway::Gateway::bind(config).await?;
        println!("cradle-gateway listening on {}", gw.local_addr());
        gw.serve(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping");
        })
        .await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cradle-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
