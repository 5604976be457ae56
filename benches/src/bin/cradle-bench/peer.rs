//! The other process of each baseline (`cradle-bench peer <kind> ...`), and
//! the extra client processes of the N-client pipelined scenario (the blob
//! reader, `blob-reader`, lives in `blobs.rs`). Not meant
//! to be run by hand: the harness starts them with the right descriptors.

use crate::transport::{MAX_PAYLOAD, SEG_LEN, STOP, futex_wait_change, word, words};
use cradle_client::{Client, ClientOptions, WaitMode};
use ipc_core::doorbell::{Futex, Waker};
use ipc_core::shm::{Access, Segment};
use ipc_core::sync::{Ordering, StdAtomics};
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Runs the peer named by `kind`; returns an error message on failure.
pub(crate) fn run(kind: &str, args: &[String]) -> Result<(), String> {
    let arg = |i: usize| -> Result<&str, String> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("peer {kind}: missing argument {}", i + 1))
    };
    let fd = |i: usize| -> Result<RawFd, String> {
        arg(i)?
            .parse::<RawFd>()
            .map_err(|e| format!("peer {kind}: bad descriptor: {e}"))
    };
    match kind {
        "shm-spin" => shm(fd(0)?, false),
        "shm-futex" => shm(fd(0)?, true),
        "stream" => {
            let (r, w) = (fd(0)?, fd(1)?);
            let r = inherited(r);
            // The socket pair passes one descriptor for both directions.
            let w = if w == r.0 { dup(&r.1)? } else { inherited(w).1 };
            stream(r.1, w)
        }
        "tcp" => {
            let port: u16 = arg(0)?.parse().map_err(|e| format!("port: {e}"))?;
            let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
            let w = s.try_clone().map_err(|e| format!("dup: {e}"))?;
            stream(s, w)
        }
        "pipelined" => {
            let socket = arg(0)?;
            let calls: u64 = arg(1)?.parse().map_err(|e| format!("calls: {e}"))?;
            let window: usize = arg(2)?.parse().map_err(|e| format!("window: {e}"))?;
            pipelined_client(socket, calls, window)
        }
        "blob-reader" => crate::blobs::reader(arg(0)?, fd(1)?),
        "provider" => {
            let report = args.iter().skip(2).any(|a| a == "report");
            let depth = match args.iter().skip(2).find_map(|a| a.strip_prefix("depth=")) {
                Some(d) => d.parse().map_err(|e| format!("depth: {e}"))?,
                None => 0,
            };
            crate::provided::provider(arg(0)?, arg(1)?, depth, report)
        }
        "provided-pipelined" => {
            let calls: u64 = arg(1)?.parse().map_err(|e| format!("calls: {e}"))?;
            let window: usize = arg(2)?.parse().map_err(|e| format!("window: {e}"))?;
            let wait = args.get(3).map_or("spin", String::as_str);
            crate::provided::pipelined_peer(arg(0)?, calls, window, wait)
        }
        "hog" => hog(),
        other => Err(format!("unknown peer kind {other:?}")),
    }
}

/// Takes ownership of a descriptor inherited from the harness.
pub(crate) fn inherited(fd: RawFd) -> (RawFd, File) {
    // SAFETY: the harness opened `fd` for us (CLOEXEC cleared in pre_exec)
    // and nothing else in this process uses it: we take ownership here, once.
    (fd, File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn dup(f: &File) -> Result<File, String> {
    f.try_clone().map_err(|e| format!("dup: {e}"))
}

/// The echo side of the raw shared-memory ping-pong. Waits on stdin for a
/// byte before each block; a `STOP` length ends the block.
fn shm(fd: RawFd, sleep: bool) -> Result<(), String> {
    let (_, file) = inherited(fd);
    let seg = Segment::from_fd(OwnedFd::from(file)).map_err(|e| format!("segment: {e}"))?;
    if seg.len() < SEG_LEN {
        return Err("segment too small".into());
    }
    let map = seg
        .map(Access::ReadWrite)
        .map_err(|e| format!("mmap: {e}"))?;
    let w = words(&map)?;
    // SAFETY: the words lie in `map`, which lives until this function returns.
    let (req_seq, req_len, resp_seq, resp_len) = unsafe {
        (
            word(w.req_seq),
            word(w.req_len),
            word(w.resp_seq),
            word(w.resp_len),
        )
    };
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut last = 0u32;
    let mut stdin = io::stdin().lock();
    let mut go = [0u8; 1];
    let never_dead = || Ok(());
    loop {
        if stdin.read(&mut go).map_err(|e| format!("stdin: {e}"))? == 0 {
            return Ok(());
        }
        loop {
            let seq = if sleep {
                futex_wait_change(req_seq, last, never_dead)?
            } else {
                loop {
                    // Acquire pairs with the caller's Release store.
                    let v = req_seq.load(Ordering::Acquire);
                    if v != last {
                        break v;
                    }
                    std::hint::spin_loop();
                }
            };
            last = seq;
            // Relaxed: ordered after the Acquire load of `req_seq` above.
            let len = req_len.load(Ordering::Relaxed);
            if len != STOP {
                let len = len as usize;
                if len > MAX_PAYLOAD {
                    return Err(format!("request of {len} bytes"));
                }
                // SAFETY: both regions hold MAX_PAYLOAD bytes after DATA in the
                // live mapping; the caller wrote the request before its Release
                // store (loaded above with Acquire) and reads the response
                // only after our Release store below. `buf` is private.
                unsafe {
                    std::ptr::copy_nonoverlapping(w.req_data, buf.as_mut_ptr(), len);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), w.resp_data, len);
                }
                // Relaxed: published by the Release store of `resp_seq` below.
                resp_len.store(len as u32, Ordering::Relaxed);
            } else {
                // Relaxed: published by the Release store of `resp_seq` below.
                resp_len.store(STOP, Ordering::Relaxed);
            }
            // Release: the caller's Acquire load sees the payload and length.
            resp_seq.store(seq, Ordering::Release);
            if sleep {
                Waker::<StdAtomics>::wake(&Futex, resp_seq);
            }
            if len == STOP {
                break;
            }
        }
    }
}

/// The echo side of a byte stream: reads whole messages (4-byte length,
/// payload) into private memory and writes each back with its own write,
/// as an RPC server answers each call (a pipelining caller sends many
/// before it reads, so one read may hold several); ends at EOF.
fn stream(mut r: impl Read, mut w: impl Write) -> Result<(), String> {
    let mut buf = vec![0u8; 2 * (4 + MAX_PAYLOAD)];
    let mut have = 0usize;
    loop {
        let k = r.read(&mut buf[have..]).map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return if have == 0 {
                Ok(())
            } else {
                Err("EOF inside a message".into())
            };
        }
        have += k;
        // Answer the complete messages at the front of the buffer.
        let mut whole = 0usize;
        while have - whole >= 4 {
            let h = &buf[whole..whole + 4];
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(format!("message of {len} bytes"));
            }
            if have - whole < 4 + len {
                break;
            }
            w.write_all(&buf[whole..whole + 4 + len])
                .map_err(|e| format!("write: {e}"))?;
            whole += 4 + len;
        }
        if whole > 0 {
            buf.copy_within(whole..have, 0);
            have -= whole;
        }
    }
}

/// A CPU hog for `--load`: spins until killed (the harness stops and
/// continues it with SIGSTOP / SIGCONT between its slots).
fn hog() -> Result<(), String> {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// One client process of the N-client pipelined scenario: connects, says
/// `ready`, then for each `go` line on stdin runs `calls` pipelined calls and
/// prints `<calls> <nanoseconds>`.
fn pipelined_client(socket: &str, calls: u64, window: usize) -> Result<(), String> {
    let client = Client::connect_with(
        socket,
        ClientOptions {
            timeout: Duration::from_secs(30),
            wait: WaitMode::Spin,
        },
    )
    .map_err(|e| format!("connect: {e}"))?;
    let mut out = io::stdout().lock();
    writeln!(out, "ready").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        if line.trim() != "go" {
            continue;
        }
        let ns = crate::cradle::pipelined(&client, calls, window, 0)?;
        writeln!(out, "{calls} {ns}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
