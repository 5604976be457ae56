//! Real processes for the gateway's tests: a `cradle-server` on a socket in
//! a temp dir, a `cradle-gateway` on a loopback port, a self-signed CA made
//! with rcgen, and a watchdog.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Aborts the test process if the test runs past `secs` (a hang would
/// otherwise stall CI); a test never asserts a run time.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

impl Watchdog {
    pub fn new(secs: u64, name: &'static str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!("watchdog: {name} still running after {secs} s; aborting");
                std::process::abort();
            }
        });
        Self(tx)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private temp directory (mode 0700), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        static N: ipc_core::sync::AtomicU32 = ipc_core::sync::AtomicU32::new(0);
        // Relaxed: only uniqueness of the number matters; no partner.
        let n = N.fetch_add(1, ipc_core::sync::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("cradle-gw-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `cradle-server` binary of this workspace, built if missing (`cargo
/// test --workspace` builds it anyway).
pub fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>
    let bin = dir.join("cradle-server");
    if !bin.exists() {
        let profile = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "cradle-server", "--bin", "cradle-server"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "cannot build cradle-server"
        );
    }
    bin
}

/// The `cradle` CLI of this workspace, built if missing.
pub fn cli_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("cradle");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "cradle-client", "--bin", "cradle"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build cradle");
    }
    bin
}

pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cradle-gateway"))
}

/// Starts a server on `dir/cradle.sock` (memory cache `mem`, no disk tier)
/// and waits for its socket.
pub fn start_server(dir: &Path, mem: &str) -> Proc {
    let sock = dir.join("cradle.sock");
    let child = Command::new(server_bin())
        .arg("--socket")
        .arg(&sock)
        .args([
            "--no-disk-cache",
            "--mem-cache-bytes",
            mem,
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let t0 = Instant::now();
    while cradle_client::Client::connect(&sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// Paths of a CA, and a certificate for localhost/127.0.0.1 it signed.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates a self-signed CA and a server certificate into `dir`.
pub fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cradle test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// A running gateway and what a client needs to reach it.
pub struct Gw {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub token_file: PathBuf,
    pub url: String,
}

/// Starts `cradle-gateway` for the server in `dir` on 127.0.0.1 (any
/// port), with TLS when `pki` is given; `extra` flags are appended.
pub fn start_gateway(dir: &Path, pki: Option<&Pki>, extra: &[&str]) -> Gw {
    let token_file = dir.join("gateway.token");
    let mut cmd = Command::new(gateway_bin());
    cmd.arg("--socket")
        .arg(dir.join("cradle.sock"))
        .arg("--token-file")
        .arg(&token_file)
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some(p) = pki {
        cmd.arg("--tls-cert")
            .arg(&p.cert)
            .arg("--tls-key")
            .arg(&p.key);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("gateway said {line:?}: {e}"));
    let scheme = if pki.is_some() {
        "cradle+https"
    } else {
        "cradle+http"
    };
    Gw {
        proc,
        addr,
        token_file,
        url: format!("{scheme}://{}", addr),
    }
}

/// A remote client of `gw`, trusting `pki`'s CA.
pub fn remote(gw: &Gw, pki: Option<&Pki>) -> cradle_client::RemoteClient {
    let mut opts = cradle_client::RemoteOptions::from_token_file(&gw.token_file).unwrap();
    if let Some(p) = pki {
        opts = opts.with_ca_file(&p.ca).unwrap();
    }
    // Its URL names the IP; the certificate carries it as a SAN.
    cradle_client::RemoteClient::connect(&gw.url, opts).unwrap()
}

/// Polls `f` until it holds or `secs` pass.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pseudo-random bytes (xorshift), deterministic per seed.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
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
