//! The gateway against plain gRPC and raw TLS on the same loopback, in one
//! run (docs/benchmarks.md "The gateway"):
//!
//! 1. a small remote call (`cradle.ping`, 8 bytes) through the gateway vs
//!    a plain tonic unary echo (`BenchEcho`, same message type, same TLS
//!    settings, its own process), each timed from a blocking caller the
//!    same way; interleaved blocks, medians;
//! 2. a 1 GiB download (`cache().get`, digest-checked) vs reading the same
//!    number of bytes from a raw TLS stream (tokio-rustls, no gRPC);
//! 3. an upload of content the gateway has already: the whole `put`
//!    (hashing included), and its two round trips alone.
//!
//! `cargo build --release -p cradle-server -p cradle-gateway && cargo bench
//! -p cradle-gateway --bench gateway` (`-- --quick`: fewer rounds and
//! 256 MiB instead of 1 GiB; `-- --small-only`: the small-call phase
//! alone, for profiling; `CRADLE_BENCH_GATEWAY_ARGS="--local-wait sleep"`
//! passes flags to the gateway). The downloads also print the user+system
//! CPU seconds of every thread on both paths. Figures are printed, never
//! asserted.

use cradle_proto::v1::CallResponse;
use cradle_proto::v1::bench_echo_client::BenchEchoClient;
use cradle_proto::v1::bench_echo_server::{BenchEcho, BenchEchoServer};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Echo;

#[tonic::async_trait]
impl BenchEcho for Echo {
    async fn echo(&self, r: Request<CallResponse>) -> Result<Response<CallResponse>, Status> {
        Ok(Response::new(r.into_inner()))
    }
}

fn tls_identity(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join("cert.pem")).unwrap(),
        std::fs::read(dir.join("key.pem")).unwrap(),
    )
}

/// Child mode: a plain tonic echo server over TLS, with the gateway's
/// HTTP/2 settings; prints its port.
fn echo_server(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (cert, key) = tls_identity(dir);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("port {}", l.local_addr().unwrap().port());
        tonic::transport::Server::builder()
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .unwrap()
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .add_service(BenchEchoServer::new(Echo))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
            )
            .await
            .unwrap();
    });
}

fn rustls_server_config(dir: &Path) -> tokio_rustls::rustls::ServerConfig {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

/// Child mode: writes `bytes` zero... bytes (the same pseudo-random bytes
/// as the blob) to every TLS client; prints its port.
fn raw_tls_server(dir: &Path, len: usize) {
    use tokio::io::AsyncWriteExt;
    let data = std::sync::Arc::new(pseudo_random(len, 7));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(rustls_server_config(dir)));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("port {}", l.local_addr().unwrap().port());
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(s).await.unwrap();
                for c in data.chunks(1 << 20) {
                    tls.write_all(c).await.unwrap();
                }
                tls.shutdown().await.unwrap();
            });
        }
    });
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn spawn_child(mode: &str, dir: &Path, len: usize) -> (Kill, u16) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .env("CRADLE_BENCH_CHILD", mode)
        .env("CRADLE_BENCH_DIR", dir)
        .env("CRADLE_BENCH_LEN", len.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().trim_start_matches("port ").parse().unwrap();
    (Kill(c), port)
}

fn make_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// CPU seconds (user, system) used so far by each thread of `pid`, by
/// thread name (threads of one name summed).
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, (f64, f64)> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let user = f[11].parse::<f64>().unwrap_or(0.0) / hz;
        let system = f[12].parse::<f64>().unwrap_or(0.0) / hz;
        let e = out.entry(name).or_insert((0.0, 0.0));
        e.0 += user;
        e.1 += system;
    }
    out
}

/// Per-thread-name CPU seconds between two [`thread_cpu`] readings.
fn cpu_diff(
    a: &std::collections::BTreeMap<String, (f64, f64)>,
    b: &std::collections::BTreeMap<String, (f64, f64)>,
) -> std::collections::BTreeMap<String, (f64, f64)> {
    b.iter()
        .map(|(k, v)| {
            let w = a.get(k).copied().unwrap_or((0.0, 0.0));
            (k.clone(), (v.0 - w.0, v.1 - w.1))
        })
        .filter(|(_, v)| v.0 + v.1 > 0.0)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if let Ok(mode) = std::env::var("CRADLE_BENCH_CHILD") {
        let dir = PathBuf::from(std::env::var("CRADLE_BENCH_DIR").unwrap());
        let len: usize = std::env::var("CRADLE_BENCH_LEN").unwrap().parse().unwrap();
        match mode.as_str() {
            "echo" => echo_server(&dir),
            "raw" => raw_tls_server(&dir, len),
            _ => unreachable!(),
        }
        return;
    }
    // `cargo test --benches` runs this with no arguments and must stay
    // quick: only `cargo bench` (which passes --bench) measures.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("gateway bench: run with `cargo bench -p cradle-gateway --bench gateway`");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // `--small-only`: the small-call phase alone (for profiling the two
    // servers' processes under the same loop, e.g. with `perf record`).
    let small_only = args.iter().any(|a| a == "--small-only");
    let (rounds, calls, big) = if quick {
        (3, 500, 256usize << 20)
    } else {
        (7, 2000, 1usize << 30)
    };

    let dir = std::env::temp_dir().join(format!("cradle-gw-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    make_pki(&dir);
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap();
    let sock = dir.join("cradle.sock");
    let _server = Kill(
        Command::new(target.join("cradle-server"))
            .arg("--socket")
            .arg(&sock)
            .args([
                "--no-disk-cache",
                "--mem-cache-bytes",
                "3G",
                "--log-level",
                "warn",
            ])
            .spawn()
            .expect("cradle-server: cargo build --release -p cradle-server first"),
    );
    while cradle_client::Client::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut gw = Command::new(env!("CARGO_BIN_EXE_cradle-gateway"))
        .arg("--socket")
        .arg(&sock)
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .args(
            std::env::var("CRADLE_BENCH_GATEWAY_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(gw.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let gw_pid = gw.id();
    let _gw = Kill(gw);
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    let opts = cradle_client::RemoteOptions::from_token_file(&dir.join("token"))
        .unwrap()
        .with_ca_file(&dir.join("ca.pem"))
        .unwrap();
    let remote =
        cradle_client::RemoteClient::connect(&format!("cradle+https://{addr}"), opts).unwrap();

    // The echo baseline, called the way RemoteClient calls: a blocking
    // caller over a one-worker runtime.
    let (_echo, echo_port) = spawn_child("echo", &dir, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let mut echo = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{echo_port}"))
            .unwrap()
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                    .domain_name("127.0.0.1"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        BenchEchoClient::new(ch)
    });

    let payload = vec![7u8; 8];
    let (mut gw_us, mut echo_us) = (Vec::new(), Vec::new());
    for round in 0..rounds + 1 {
        let mut g = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            remote.call::<ipc_rpc::builtin::Ping>(&payload).unwrap();
            g.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut e = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            let msg = CallResponse {
                body: payload.clone(),
                blobs: Vec::new(),
            };
            rt.block_on(echo.echo(msg)).unwrap();
            e.push(t.elapsed().as_secs_f64() * 1e6);
        }
        if round > 0 {
            // round 0 warms up both
            gw_us.push(median(g));
            echo_us.push(median(e));
        }
    }
    let (g, e) = (median(gw_us), median(echo_us));
    println!(
        "small call (8 B): gateway {g:.1} µs, tonic echo {e:.1} µs, ratio {:.2}x (target <= 1.3x); medians of {rounds} blocks of {calls}",
        g / e
    );
    // Breakdown: a gateway RPC that makes no local call (GatewayStats,
    // token check included) against the same echo.
    let mut st = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        remote.gateway_stats().unwrap();
        st.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "  of which gRPC + token check alone (GatewayStats, no local call): {:.1} µs",
        median(st)
    );
    if small_only {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    // Downloads: through the gateway (digest-checked) vs raw TLS.
    let data = pseudo_random(big, 7);
    let t = Instant::now();
    remote.cache().put("bench/big", &data).unwrap();
    let up = t.elapsed().as_secs_f64();
    println!(
        "upload {:.0} MiB (hash, FindMissing, stream, digest check at the gateway, put): {:.0} MiB/s ({up:.2} s)",
        big as f64 / (1 << 20) as f64,
        big as f64 / (1 << 20) as f64 / up
    );
    let (raw, raw_port) = spawn_child("raw", &dir, big);
    let _raw = &raw;
    let raw_pid = raw.0.id();
    let me = std::process::id();
    let (mut gw_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
    let connector = {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
    };
    let (mut gw_s, mut raw_s) = (Vec::new(), Vec::new());
    let dl_rounds = if quick { 2 } else { 3 };
    for _ in 0..dl_rounds {
        let (c0, g0) = (thread_cpu(me), thread_cpu(gw_pid));
        let t = Instant::now();
        let got = remote.cache().get("bench/big").unwrap().unwrap();
        gw_s.push(t.elapsed().as_secs_f64());
        gw_cpu.push((
            cpu_diff(&c0, &thread_cpu(me)),
            cpu_diff(&g0, &thread_cpu(gw_pid)),
        ));
        assert_eq!(got.len(), big);
        drop(got);
        let (c0, r0) = (thread_cpu(me), thread_cpu(raw_pid));
        let t = Instant::now();
        let n = rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", raw_port))
                .await
                .unwrap();
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            let mut out = Vec::with_capacity(big);
            tls.read_to_end(&mut out).await.unwrap();
            out.len()
        });
        raw_s.push(t.elapsed().as_secs_f64());
        raw_cpu.push((
            cpu_diff(&c0, &thread_cpu(me)),
            cpu_diff(&r0, &thread_cpu(raw_pid)),
        ));
        assert_eq!(n, big);
    }
    let mib = big as f64 / (1 << 20) as f64;
    let (g, r) = (median(gw_s.clone()), median(raw_s.clone()));
    println!(
        "download {mib:.0} MiB: gateway {:.0} MiB/s ({g:.2} s), raw TLS {:.0} MiB/s ({r:.2} s), throughput ratio {:.2}x (target >= 0.7x)",
        mib / g,
        mib / r,
        r / g
    );
    // Where the CPU went (user+system seconds per download, by thread
    // name; the run whose time was the median).
    let at = |v: &Vec<f64>| {
        let m = median(v.clone());
        v.iter().position(|x| *x == m).unwrap_or(0)
    };
    let show = |m: &std::collections::BTreeMap<String, (f64, f64)>| {
        m.iter()
            .map(|(k, (u, s))| format!("{k} {u:.2}+{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (gc, gg) = &gw_cpu[at(&gw_s)];
    let (rc, rr) = &raw_cpu[at(&raw_s)];
    println!(
        "  CPU s (user+system): gateway path: client [{}], gateway [{}]; raw path: client [{}], server [{}]",
        show(gc),
        show(gg),
        show(rc),
        show(rr)
    );

    // Upload of content the gateway has: whole put, and its round trips.
    let t = Instant::now();
    let before = remote.bytes_sent();
    remote.cache().put("bench/big2", &data).unwrap();
    let whole = t.elapsed();
    assert_eq!(remote.bytes_sent(), before, "nothing sent");
    assert!(
        remote
            .find_missing(&[cradle_client::ContentDigest::of(&data)])
            .unwrap()
            .is_empty()
    );
    let t = Instant::now();
    let hash_only = {
        let _ = cradle_client::ContentDigest::of(&data);
        t.elapsed()
    };
    let mut rtts = Vec::new();
    let mut ping = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        remote.cache().put("bench/small-again", &payload).unwrap();
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        remote.call::<ipc_rpc::builtin::Ping>(&payload).unwrap();
        ping.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "upload of present content ({mib:.0} MiB): whole put {:.1} ms of which hashing {:.1} ms; put of an 8 B present blob {:.0} µs (FindMissing + CachePut, hashing negligible) vs one round trip (ping) {:.0} µs",
        whole.as_secs_f64() * 1e3,
        hash_only.as_secs_f64() * 1e3,
        median(rtts),
        median(ping)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
