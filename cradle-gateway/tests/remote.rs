//! The gateway end to end: real `cradle-server` and `cradle-gateway`
//! processes on loopback, TLS with a CA generated here, `RemoteClient` and
//! raw gRPC clients.
//!
//! They run the workspace's `target/<profile>/cradle-server` and `cradle`
//! binaries (built here only if missing). `cargo test --workspace` builds
//! both first; when running this crate alone, build them first so they are
//! current: `cargo build -p cradle-server -p cradle-client && cargo test
//! -p cradle-gateway`.

mod support;

use cradle_client::{Client, ContentDigest, GatewayError, RemoteOptions};
use cradle_proto::v1::gateway_client::GatewayClient;
use cradle_proto::v1::{CallRequest, UploadChunk};
use ipc_rpc::builtin::{Ping, Stats};
use std::time::{Duration, Instant};
use support::*;
use tonic::Code;

fn code(e: &GatewayError) -> Option<Code> {
    e.code()
}

/// Runs `cradle --remote` on the gateway `gw` with `args`: whether it
/// succeeded, its stdout and its stderr.
fn remote_cli(gw: &Gw, pki: &Pki, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(cli_bin())
        .arg("--remote")
        .arg(&gw.url)
        .arg("--token-file")
        .arg(&gw.token_file)
        .arg("--ca-file")
        .arg(&pki.ca)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stdout, stderr)
}

#[test]
fn remote_put_get_checks_digests_and_a_second_upload_sends_no_byte() {
    let _w = Watchdog::new(240, "remote_put_get");
    let dir = TempDir::new("putget");
    let _server = start_server(dir.path(), "512M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let remote = remote(&gw, Some(&pki));

    assert_eq!(
        remote.call::<Ping>(&b"over TLS".to_vec()).unwrap(),
        b"over TLS"
    );
    let stats = remote.call::<Stats>(&()).unwrap();
    assert!(stats.sessions >= 1, "the gateway's own session is counted");

    let data = bytes((5 << 20) + 123, 1);
    remote.cache().put("a", &data).unwrap();
    let s1 = remote.gateway_stats().unwrap();
    assert_eq!(s1.upload_bytes, data.len() as u64);
    assert_eq!(remote.bytes_sent(), data.len() as u64);
    assert_eq!(s1.uploads, 1);

    let back = remote.cache().get("a").unwrap().expect("stored");
    assert!(back == data, "the bytes came back different");
    let local = Client::connect(dir.path().join("cradle.sock")).unwrap();
    assert!(local.cache().get("a").unwrap().expect("local view")[..] == data[..]);

    // The same content under another key: asked, not sent.
    remote.cache().put("b", &data).unwrap();
    let s2 = remote.gateway_stats().unwrap();
    assert_eq!(
        s2.upload_bytes, s1.upload_bytes,
        "no byte uploaded the second time"
    );
    assert_eq!(remote.bytes_sent(), data.len() as u64);
    assert_eq!(s2.uploads, 1);
    assert!(remote.cache().get("b").unwrap().expect("b") == data);

    // Content put locally becomes nameable by digest once the gateway
    // has served it; a remote put of the same bytes then sends nothing.
    let other = bytes(300_000, 2);
    let mut w = local.create(other.len()).unwrap();
    w.write_at(0, &other);
    local.cache().put("local", &w.seal().unwrap()).unwrap();
    assert!(remote.cache().get("local").unwrap().expect("local key") == other);
    let before = remote.bytes_sent();
    remote.cache().put("copy", &other).unwrap();
    assert_eq!(remote.bytes_sent(), before);
    assert!(
        remote
            .find_missing(&[ContentDigest::of(&other)])
            .unwrap()
            .is_empty()
    );

    // A key replaced locally no longer names the old digest.
    let mut w = local.create(3).unwrap();
    w.write_at(0, b"new");
    local.cache().put("local", &w.seal().unwrap()).unwrap();
    local.cache().remove("copy").unwrap();
    assert_eq!(
        remote
            .find_missing(&[ContentDigest::of(&other)])
            .unwrap()
            .len(),
        1,
        "stale index entries are dropped"
    );

    let keys: Vec<String> = remote
        .cache()
        .list("")
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(keys, ["a", "b", "local"]);
    assert!(remote.cache().remove("a").unwrap());
    assert!(remote.cache().get("a").unwrap().is_none());
    assert!(!remote.cache().put_if_absent("b", b"other").unwrap());

    // Blob and provider methods are not callable by name through Call.
    let e = remote
        .call::<ipc_rpc::blob::CacheGet>(&"b".to_owned())
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::PermissionDenied), "{e}");
    // An unknown method is the server's UnknownMethod, as locally.
    let e = remote.call_bytes("nobody.here", 1, b"", &[]).unwrap_err();
    assert!(
        matches!(
            &e,
            GatewayError::Call(cradle_client::CallError::Remote {
                code: cradle_client::ErrorCode::UnknownMethod,
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn wrong_token_no_token_and_plain_text_are_refused_before_any_work() {
    let _w = Watchdog::new(240, "refusals");
    let dir = TempDir::new("refuse");
    let _server = start_server(dir.path(), "256M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);

    // The token file was generated with mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&gw.token_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Wrong token.
    let opts = RemoteOptions::new("not-the-token-at-all")
        .with_ca_file(&pki.ca)
        .unwrap();
    let wrong = cradle_client::RemoteClient::connect(&gw.url, opts).unwrap();
    let e = wrong.call::<Ping>(&vec![1]).unwrap_err();
    assert_eq!(code(&e), Some(Code::Unauthenticated), "{e}");
    let e = wrong.cache().put("x", b"payload").unwrap_err();
    assert_eq!(code(&e), Some(Code::Unauthenticated), "{e}");

    // No token at all: a raw gRPC client over the same TLS.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(&pki.ca).unwrap(),
            ))
            .domain_name("127.0.0.1");
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", gw.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = GatewayClient::new(ch);
        let e = c
            .call(CallRequest {
                method: "cradle.ping".into(),
                version: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let chunks = tokio_stream::iter(vec![UploadChunk {
            digest: Some(cradle_proto::v1::Digest {
                blake3: vec![0; 32],
                size: 1,
            }),
            data: vec![1].into(),
        }]);
        let e = c.upload_blob(chunks).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    });

    // Plain text to the TLS port, with the right token: no HTTP/2 session.
    let opts = RemoteOptions::from_token_file(&gw.token_file).unwrap();
    let plain = format!("cradle+http://{}", gw.addr);
    match cradle_client::RemoteClient::connect(&plain, opts) {
        Err(e) => assert!(matches!(e, GatewayError::Connect(_)), "{e:?}"),
        Ok(c) => {
            let e = c.call::<Ping>(&vec![1]).unwrap_err();
            assert!(code(&e).is_some_and(|c| c != Code::Ok), "{e:?}");
        }
    }

    // Nothing ran: no call forwarded, no byte taken, no key stored.
    let good = remote(&gw, Some(&pki));
    let s = good.gateway_stats().unwrap();
    assert_eq!((s.calls, s.uploads, s.upload_bytes), (0, 0, 0));
    assert!(s.unauthenticated >= 4, "{s:?}");
    let local = Client::connect(dir.path().join("cradle.sock")).unwrap();
    assert!(local.cache().get("x").unwrap().is_none());
}

#[test]
fn a_killed_server_gives_unavailable_and_the_gateway_reconnects() {
    let _w = Watchdog::new(240, "reconnect");
    let dir = TempDir::new("reconnect");
    let mut server = start_server(dir.path(), "256M");
    let gw = start_gateway(dir.path(), None, &[]);
    let remote = remote(&gw, None);
    remote.cache().put("k", b"before").unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let health = |rt: &tokio::runtime::Runtime| -> i32 {
        rt.block_on(async {
            use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
            // No token: the health service answers anyone.
            HealthClient::new(ch)
                .check(HealthCheckRequest {
                    service: "cradle.gateway.v1.Gateway".into(),
                })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        })
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    eventually(30, "health says SERVING", || {
        health(&rt) == ServingStatus::Serving as i32
    });

    server.kill();
    let t0 = Instant::now();
    let e = remote.call::<Ping>(&vec![1]).unwrap_err();
    let first = t0.elapsed();
    assert_eq!(code(&e), Some(Code::Unavailable), "{e}");
    let e = remote.cache().get("k").unwrap_err();
    assert_eq!(code(&e), Some(Code::Unavailable), "{e}");
    eprintln!("UNAVAILABLE after {first:?} (server killed)");
    eventually(30, "health says NOT_SERVING", || {
        health(&rt) == ServingStatus::NotServing as i32
    });

    let _server = start_server(dir.path(), "256M");
    eventually(30, "the gateway answers again", || {
        remote.call::<Ping>(&vec![2]).is_ok()
    });
    // A new server: the old contents and the gateway's old index are gone.
    assert!(remote.cache().get("k").unwrap().is_none());
    remote.cache().put("k", b"after").unwrap();
    assert_eq!(remote.cache().get("k").unwrap().unwrap(), b"after");
    assert!(remote.gateway_stats().unwrap().local_connects >= 2);
    eventually(30, "health says SERVING again", || {
        health(&rt) == ServingStatus::Serving as i32
    });
}

fn local_blob_stats(local: &Client) -> cradle_client::BlobStats {
    local.call::<Stats>(&()).unwrap().blobs
}

#[test]
fn an_upload_cut_off_or_a_gateway_killed_mid_upload_stores_nothing() {
    let _w = Watchdog::new(240, "mid_upload");
    let dir = TempDir::new("midupload");
    let _server = start_server(dir.path(), "512M");
    let local = Client::connect(dir.path().join("cradle.sock")).unwrap();
    let mut gw = start_gateway(dir.path(), None, &[]);
    let token = std::fs::read_to_string(&gw.token_file).unwrap();
    let watcher = remote(&gw, None);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Announces 64 MiB, sends 8, then waits for `stop`.
    let start_upload = |addr: std::net::SocketAddr, stop: tokio::sync::oneshot::Receiver<()>| {
        let token = token.trim().to_owned();
        rt.spawn(async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut c = GatewayClient::new(ch);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let data = vec![5u8; 1 << 20];
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let call = tokio::spawn(async move { c.upload_blob(req).await });
            for i in 0..8 {
                let digest = (i == 0).then(|| cradle_proto::v1::Digest {
                    blake3: vec![9; 32],
                    size: 64 << 20,
                });
                tx.send(UploadChunk {
                    digest,
                    data: data.clone().into(),
                })
                .await
                .unwrap();
            }
            let _ = stop.await;
            drop(tx);
            call.abort();
        })
    };

    // 1. The client goes away mid-upload: refused, nothing staged or kept.
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = start_upload(gw.addr, stopped);
    eventually(60, "8 MiB reach the gateway", || {
        watcher.gateway_stats().unwrap().upload_bytes >= 8 << 20
    });
    assert_eq!(
        local_blob_stats(&local).writing,
        1,
        "the blob is being written"
    );
    let _ = stop.send(());
    rt.block_on(task).unwrap();
    eventually(30, "the cut-off upload is refused and freed", || {
        let s = watcher.gateway_stats().unwrap();
        s.uploads_refused == 1 && s.staged_blobs == 0 && local_blob_stats(&local).writing == 0
    });

    // 2. The gateway is killed mid-upload: its session goes, and the
    //    half-written blob with it.
    let (_keep, never) = tokio::sync::oneshot::channel::<()>();
    let _task = start_upload(gw.addr, never);
    eventually(60, "8 more MiB reach the gateway", || {
        watcher.gateway_stats().unwrap().upload_bytes >= 16 << 20
    });
    gw.proc.kill();
    eventually(30, "nothing partial is left in the server", || {
        let b = local_blob_stats(&local);
        b.writing == 0 && b.blobs == 0
    });
    let page = local
        .call::<ipc_rpc::blob::CacheList>(&ipc_rpc::blob::ListRequest {
            prefix: String::new(),
            after: String::new(),
            limit: 100,
        })
        .unwrap();
    assert!(page.keys.is_empty());
}

#[test]
fn limits_refuse_oversized_uploads() {
    let _w = Watchdog::new(120, "limits");
    let dir = TempDir::new("limits");
    let _server = start_server(dir.path(), "256M");
    let gw = start_gateway(dir.path(), None, &["--max-blob-bytes", "1000000"]);
    let remote = remote(&gw, None);
    let e = remote.cache().put("big", &bytes(1_000_001, 3)).unwrap_err();
    assert_eq!(code(&e), Some(Code::ResourceExhausted), "{e}");
    remote.cache().put("small", &bytes(1_000_000, 3)).unwrap();
    let s = remote.gateway_stats().unwrap();
    assert_eq!(s.upload_bytes, 1_000_000);
}

/// 1 GiB up and down through a TLS gateway, digest-checked both ways, and
/// the second upload of the same GiB sends nothing. Slow in a debug
/// build: run with `cargo test --release -p cradle-gateway --test remote
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn one_gib_up_and_down() {
    let _w = Watchdog::new(900, "one_gib");
    let dir = TempDir::new("gib");
    let _server = start_server(dir.path(), "3G");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let remote = remote(&gw, Some(&pki));
    let data = bytes(1 << 30, 7);
    let t0 = Instant::now();
    remote.cache().put("gib", &data).unwrap();
    let up = t0.elapsed();
    let t0 = Instant::now();
    let back = remote.cache().get("gib").unwrap().unwrap();
    let down = t0.elapsed();
    assert!(back == data);
    drop(back);
    let t0 = Instant::now();
    remote.cache().put("gib2", &data).unwrap();
    let again = t0.elapsed();
    assert_eq!(remote.bytes_sent(), 1 << 30);
    let mib = |d: Duration| 1024.0 / d.as_secs_f64();
    eprintln!(
        "1 GiB: up {up:?} ({:.0} MiB/s), down {down:?} ({:.0} MiB/s), second upload {again:?} (hashing included)",
        mib(up),
        mib(down)
    );
}

#[test]
fn help_describes_every_flag() {
    let out = std::process::Command::new(gateway_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--socket",
        "--tls-cert",
        "--tls-key",
        "--token-file",
        "--max-message-bytes",
        "--max-concurrent-streams",
        "--max-upload-bytes-per-connection",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn the_gateway_refuses_plain_text_off_loopback() {
    let dir = TempDir::new("offloop");
    let out = std::process::Command::new(gateway_bin())
        .arg("--socket")
        .arg(dir.path().join("cradle.sock"))
        .arg("--token-file")
        .arg(dir.path().join("t"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without TLS"), "{err}");
}

#[test]
fn the_cli_works_through_the_gateway() {
    let _w = Watchdog::new(240, "cli");
    let dir = TempDir::new("cli");
    let _server = start_server(dir.path(), "256M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let cradle = |args: &[&str]| remote_cli(&gw, &pki, args);
    let file = dir.path().join("in.bin");
    std::fs::write(&file, bytes(2_000_000, 9)).unwrap();
    let f = file.to_str().unwrap();

    let (ok, out, err) = cradle(&["ping", "--count", "20"]);
    assert!(ok && out.contains("20 calls"), "{out}{err}");
    let (ok, out, err) = cradle(&["--json", "put", "model", f]);
    assert!(ok && out.contains("\"bytes_sent\":2000000"), "{out}{err}");
    let (ok, out, err) = cradle(&["--json", "put", "model2", f]);
    assert!(
        ok && out.contains("\"bytes_sent\":0"),
        "second put sends nothing: {out}{err}"
    );
    let copy = dir.path().join("out.bin");
    let (ok, out, err) = cradle(&["get", "model", "-o", copy.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&file).unwrap());
    let (ok, out, err) = cradle(&["ls"]);
    assert!(
        ok && out.contains("model") && out.contains("model2"),
        "{out}{err}"
    );
    let (ok, out, err) = cradle(&["rm", "model"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cradle(&["rm", "model"]);
    assert!(!ok && err.contains("no entry"), "{err}");
    let (ok, out, err) = cradle(&["--json", "stats"]);
    assert!(ok && out.contains("\"sessions\""), "{out}{err}");
    // A transfer bar on request, though stderr is a pipe here: drawn while
    // the bytes cross (put and get), nothing on stdout but the report.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, bytes(48 << 20, 10)).unwrap();
    let (ok, out, err) = cradle(&["--progress", "--json", "put", "big", big.to_str().unwrap()]);
    assert!(ok && out.starts_with('{'), "{out}{err}");
    assert!(
        err.contains("put [") && err.contains("MiB"),
        "no bar: {err:?}"
    );
    let back = dir.path().join("big.out");
    let (ok, out, err) = cradle(&["--progress", "get", "big", "-o", back.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("get [") && err.contains("MiB"),
        "no bar: {err:?}"
    );
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&big).unwrap());
    // Without --progress and without a terminal: no bar.
    let (ok, _, err) = cradle(&["put", "big2", big.to_str().unwrap()]);
    assert!(ok && !err.contains("put ["), "{err:?}");
}

#[test]
fn methods_call_and_memo_work_through_the_gateway_in_the_cli() {
    use ipc_rpc::Method;
    use ipc_rpc::example::{Work, WorkRequest};
    let _w = Watchdog::new(240, "cli methods/call/memo");
    let dir = TempDir::new("climore");
    let _server = start_server(dir.path(), "256M");
    let pki = make_pki(dir.path());
    let gw = start_gateway(dir.path(), Some(&pki), &[]);
    let cradle = |args: &[&str]| remote_cli(&gw, &pki, args);
    let (ok, out, err) = cradle(&["--json", "methods"]);
    assert!(
        ok && out.contains("\"cradle.ping\"") && out.contains("\"cradle.example.work\""),
        "{out}{err}"
    );
    // One memoized run, made remotely.
    let remote = remote(&gw, Some(&pki));
    let req = WorkRequest {
        seed: 5,
        sleep_ms: 0,
        input: None,
        out_len: 0,
    };
    remote.call::<Work>(&req).unwrap();
    // `call` of a bytes body: work_runs takes () (no bytes), answers a u64.
    let (ok, out, err) = cradle(&["call", "cradle.example.work_runs", "--raw-hex", ""]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.trim(),
        "0100000000000000",
        "one run, as a little-endian u64"
    );
    let (ok, out, err) = cradle(&["--json", "memo", "ls", Work::NAME]);
    assert!(
        ok && out.contains("\"entries\":1") && out.contains("\"misses\":1"),
        "{out}{err}"
    );
    let (ok, out, err) = cradle(&["--json", "memo", "clear"]);
    assert!(ok && out.contains("\"removed\":1"), "{out}{err}");
    let (ok, out, err) = cradle(&["--json", "memo", "ls", Work::NAME]);
    assert!(ok && out.contains("\"entries\":0"), "{out}{err}");
    let (ok, _, err) = cradle(&["memo", "ls", "no.such.method"]);
    assert!(!ok && err.contains("no memoized method"), "{err}");
    // A method the gateway refuses: the error says so.
    let (ok, _, err) = cradle(&["call", "cradle.blob.create", "--raw-hex", "00"]);
    assert!(
        !ok && err.contains("not callable through the gateway"),
        "{err}"
    );
    // Commands that need no server say so instead of connecting.
    let (ok, out, err) = cradle(&["completions", "bash"]);
    assert!(ok && out.contains("cradle"), "{err}");
}

fn rss_anon_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_slow_remote_reader_does_not_make_the_gateway_hold_the_blob_in_memory() {
    let _w = Watchdog::new(240, "slow_reader");
    let dir = TempDir::new("slow");
    let _server = start_server(dir.path(), "1G");
    let gw = start_gateway(dir.path(), None, &[]);
    let local = Client::connect(dir.path().join("cradle.sock")).unwrap();
    let len = 256usize << 20;
    let data = bytes(len, 11);
    let mut w = local.create(len).unwrap();
    w.write_at(0, &data);
    local.cache().put("big", &w.seal().unwrap()).unwrap();
    let watcher = remote(&gw, None);
    let token = std::fs::read_to_string(&gw.token_file).unwrap();
    let before = rss_anon_kib(gw.proc.pid());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut stream = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut req = tonic::Request::new(cradle_proto::v1::CacheGetRequest { key: "big".into() });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", token.trim()).parse().unwrap(),
        );
        GatewayClient::new(ch)
            .cache_get(req)
            .await
            .unwrap()
            .into_inner()
    });
    let first = rt.block_on(stream.message()).unwrap().unwrap();
    assert_eq!(first.size, len as u64);

    // The reader stalls: the gateway stops once the windows are full.
    let mut sent = 0;
    eventually(30, "the gateway stops sending", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = watcher.gateway_stats().unwrap().download_bytes;
        let still = now == sent;
        sent = now;
        still
    });
    let grown_mib = (rss_anon_kib(gw.proc.pid()).saturating_sub(before)) / 1024;
    eprintln!(
        "stalled reader: {} MiB sent of 256, gateway heap +{grown_mib} MiB",
        sent >> 20
    );
    assert!(
        sent < 64 << 20,
        "{sent} bytes went out to a reader that reads nothing"
    );
    assert!(grown_mib < 64, "the gateway's heap grew {grown_mib} MiB");

    // The reader resumes: everything arrives, digest-checked.
    let mut got = first.data.to_vec();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&got);
    let digest = loop {
        let c = rt.block_on(stream.message()).unwrap().unwrap();
        hasher.update(&c.data);
        got.extend_from_slice(&c.data);
        if !c.blake3.is_empty() {
            break c.blake3;
        }
    };
    assert_eq!(got.len(), len);
    assert!(got == data);
    assert_eq!(hasher.finalize().as_bytes()[..], digest[..]);
}

#[test]
fn a_provided_method_takes_and_returns_blobs_by_digest() {
    let _w = Watchdog::new(240, "provided");
    let dir = TempDir::new("provided");
    let _server = start_server(dir.path(), "512M");
    let gw = start_gateway(dir.path(), None, &[]);
    let sock = dir.path().join("cradle.sock");
    let (give, take) = std::sync::mpsc::channel();
    let provider = std::thread::spawn(move || {
        let client = Client::connect(&sock).unwrap();
        // test.reverse: the body's length, and the blobs passed, reversed
        // and concatenated, as a result blob.
        let p = client
            .provider()
            .serve_bytes("test.reverse", 1, |call, body| {
                let mut out = Vec::new();
                for b in call.blobs() {
                    out.extend(b.iter().rev());
                }
                let mut w = call.client().create(out.len())?;
                w.write_at(0, &out);
                let blob = w.seal()?;
                call.attach(blob);
                Ok((body.len() as u64).to_le_bytes().to_vec())
            });
        give.send(p.stopper()).unwrap();
        p.run().unwrap();
    });
    let stopper = take.recv().unwrap();
    let remote = remote(&gw, None);
    let a = bytes(3 << 20, 21);
    let b = bytes(1000, 22);
    let call = || remote.call_bytes("test.reverse", 1, b"four", &[&a, &b]);
    let mut answer = None;
    eventually(30, "the provider is registered", || match call() {
        Ok(r) => {
            answer = Some(r);
            true
        }
        Err(GatewayError::Call(cradle_client::CallError::Remote {
            code: cradle_client::ErrorCode::UnknownMethod,
            ..
        })) => false,
        Err(e) => panic!("{e}"),
    });
    let (body, results) = answer.unwrap();
    assert_eq!(body, 4u64.to_le_bytes());
    let want: Vec<u8> = a.iter().rev().chain(b.iter().rev()).copied().collect();
    assert_eq!(results.len(), 1);
    assert!(results[0] == want);
    // The same blobs again: named by digest, not sent.
    let sent = remote.bytes_sent();
    let (_, again) = call().unwrap();
    assert_eq!(remote.bytes_sent(), sent);
    assert!(again[0] == want);
    stopper.stop();
    provider.join().unwrap();
}

#[test]
fn a_token_file_others_can_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("tokenmode");
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(gateway_bin())
        .arg("--socket")
        .arg(dir.path().join("cradle.sock"))
        .arg("--token-file")
        .arg(&token)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by others"), "{err}");
}
