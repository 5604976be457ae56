//! Settings, binding and serving: TLS or loopback only, the token check
//! before the service, the limits, the health service and the watcher that
//! reconnects to the local server.

use crate::auth::{CheckToken, load_or_create_token};
use crate::download::Downloads;
use crate::local::{Local, StageLimits};
use crate::service::{Limits, Service};
use crate::stats::Counters;
use cradle_proto::v1::gateway_server::GatewayServer;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// Everything the gateway is started with; `cradle-gateway --help` sets
/// each field from a flag.
///
/// ```
/// let c = cradle_gateway::Config::new("/tmp/cradle.sock".into(), "/tmp/token".into());
/// assert!(c.listen.ip().is_loopback() && c.tls.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// The local server's socket.
    pub socket: PathBuf,
    /// Certificate chain and private key (PEM); `None`: plain text, which
    /// is allowed on a loopback address only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The bearer token's file (created, mode 0600, if absent).
    pub token_file: PathBuf,
    /// The largest gRPC message, either way.
    pub max_message_bytes: usize,
    /// Concurrent streams (calls, transfers) per connection.
    pub max_concurrent_streams: u32,
    /// The largest blob one upload may carry.
    pub max_blob_bytes: u64,
    /// Bytes of uploads in progress on one connection, together.
    pub max_upload_bytes_per_connection: u64,
    /// Bytes of blobs staged (uploaded or returned by calls, not stored
    /// under a key yet) that the gateway holds, all callers together.
    pub staging_bytes: u64,
    /// How long a staged blob is kept.
    pub staging_ttl: Duration,
    /// Deadline of a forwarded call (a caller may ask for less).
    pub call_timeout: Duration,
    /// How the gateway waits for the local server's answers.
    pub local_wait: cradle_client::WaitMode,
}

impl Config {
    /// The defaults, for the local server at `socket` and the token in
    /// `token_file`: loopback, any port, no TLS.
    ///
    /// ```
    /// let c = cradle_gateway::Config::new("/tmp/s".into(), "/tmp/t".into());
    /// assert_eq!(c.max_message_bytes, 4 << 20);
    /// ```
    pub fn new(socket: PathBuf, token_file: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket,
            tls: None,
            token_file,
            max_message_bytes: 4 << 20,
            max_concurrent_streams: 64,
            max_blob_bytes: 16 << 30,
            max_upload_bytes_per_connection: 16 << 30,
            staging_bytes: 4 << 30,
            staging_ttl: Duration::from_secs(600),
            call_timeout: Duration::from_secs(30),
            local_wait: cradle_client::WaitMode::default(),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A bound gateway: its address is known; [`serve`](Self::serve) runs it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = cradle_gateway::Config::new("/tmp/cradle.sock".into(), "/tmp/token".into());
/// let gw = cradle_gateway::Gateway::bind(config).await?;
/// println!("listening on {}", gw.local_addr());
/// gw.serve(std::future::pending()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    listener: tokio::net::TcpListener,
    token: String,
    addr: SocketAddr,
}

impl Gateway {
    /// Checks the settings (TLS, or a loopback address), loads or creates
    /// the token, and binds the address.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut c = cradle_gateway::Config::new("/tmp/s".into(), "/tmp/t".into());
    /// c.listen = "0.0.0.0:7443".parse()?;
    /// // No TLS on a non-loopback address: refused.
    /// assert!(cradle_gateway::Gateway::bind(c).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        if config.tls.is_none() && !config.listen.ip().is_loopback() {
            return Err(StartError(format!(
                "refusing to serve {} without TLS: plain text is allowed on a loopback address only; give --tls-cert and --tls-key",
                config.listen
            )));
        }
        let (token, created) = load_or_create_token(&config.token_file)
            .map_err(|e| StartError(format!("token file {}: {e}", config.token_file.display())))?;
        if created {
            tracing::info!(file = %config.token_file.display(), "generated a new token (mode 0600); give it to remote callers");
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError(format!("cannot read the bound address: {e}")))?;
        Ok(Self {
            config,
            listener,
            token,
            addr,
        })
    }

    /// The address bound (with the real port when 0 was asked).
    ///
    /// ```no_run
    /// # async fn demo(gw: cradle_gateway::Gateway) {
    /// println!("{}", gw.local_addr());
    /// # }
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes.
    ///
    /// ```no_run
    /// # async fn demo(gw: cradle_gateway::Gateway) -> Result<(), Box<dyn std::error::Error>> {
    /// gw.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let c = &self.config;
        let counters = Arc::new(Counters::default());
        let local = Arc::new(Local::new(
            c.socket.clone(),
            c.call_timeout,
            c.local_wait,
            counters.clone(),
        ));
        let limits = Limits {
            max_blob_bytes: c.max_blob_bytes,
            upload_bytes_per_connection: c.max_upload_bytes_per_connection,
            staging: StageLimits {
                bytes: c.staging_bytes,
                ttl: c.staging_ttl,
            },
            call_timeout: c.call_timeout,
        };
        let service = Arc::new(Service::new(local.clone(), counters.clone(), limits));
        let grpc = GatewayServer::from_arc(service.clone())
            .max_decoding_message_size(c.max_message_bytes)
            .max_encoding_message_size(c.max_message_bytes);
        // The downloads are answered without copying their chunks
        // (download.rs); the other RPCs by the generated server.
        let grpc = Downloads {
            inner: grpc,
            service,
            max_message_bytes: c.max_message_bytes,
        };
        let checked = InterceptedService::new(grpc, CheckToken::new(&self.token, counters));

        let (health, health_service) = tonic_health::server::health_reporter();
        let watcher = tokio::spawn(watch_local(local, health));

        let mut builder = Server::builder()
            .max_concurrent_streams(Some(c.max_concurrent_streams))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .max_frame_size(Some(1 << 20))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        if let Some((cert, key)) = &c.tls {
            let cert = std::fs::read(cert)
                .map_err(|e| StartError(format!("--tls-cert {}: {e}", cert.display())))?;
            let key = std::fs::read(key)
                .map_err(|e| StartError(format!("--tls-key {}: {e}", key.display())))?;
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .map_err(|e| StartError(format!("TLS settings refused: {e}")))?;
            tracing::info!(addr = %self.addr, "serving gRPC over TLS");
        } else {
            tracing::warn!(addr = %self.addr, "serving gRPC WITHOUT TLS, on loopback only: give --tls-cert and --tls-key to serve other machines");
        }
        // TCP_NODELAY: a response's frames leave at once, never held back
        // by Nagle's algorithm waiting for an acknowledgement.
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let r = builder
            .add_service(health_service)
            .add_service(checked)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        watcher.abort();
        r.map_err(|e| StartError(format!("the gRPC server failed: {e}")))
    }
}

/// Keeps the health status in step with the local server, and connects to
/// it again once it is back (every 2 s).
async fn watch_local(local: Arc<Local>, health: tonic_health::server::HealthReporter) {
    use cradle_proto::v1::gateway_server::GatewayServer as G;
    type Svc = G<Service>;
    loop {
        let up = match local.conn().await {
            Ok(conn) => match conn
                .client
                .call::<ipc_rpc::builtin::Ping>(&Vec::new())
                .await
            {
                Ok(_) => true,
                Err(e) => {
                    let _ = local.failed(&conn, &e).await;
                    false
                }
            },
            Err(_) => false,
        };
        if up {
            health.set_serving::<Svc>().await;
        } else {
            health.set_not_serving::<Svc>().await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
