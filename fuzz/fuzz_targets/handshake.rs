//! The control socket before a session exists, from both ends.
//!
//! * Server side: a client writes arbitrary bytes, cut into arbitrary
//!   chunks, and maybe hangs up. The server reads them with the very
//!   function its acceptor calls (`ipc_rpc::handshake::read_hello`:
//!   non-blocking `recv` into a 32-byte buffer, one partial read at a time),
//!   then `Hello::check`.
//! * Client side: a server writes arbitrary bytes (a Welcome, then 16-byte
//!   control messages) and closes; the client reads them with
//!   `ipc_rpc::handshake::recv_with_fds`.
//!
//! Checked beyond "no panic": the Hello's verdict follows the protocol
//! (`None` exactly for a wrong magic, `STATUS_OK` exactly for a matching
//! protocol, format and schema), the bytes read are the bytes sent, and a
//! short message is an error, never a message.

#![no_main]

use ipc_rpc::handshake::{
    FORMAT, HELLO_MAGIC, Hello, HelloRead, PROTOCOL_VERSION, SCHEMA_HASH, STATUS_FORMAT_MISMATCH,
    STATUS_OK, STATUS_PROTOCOL_MISMATCH, STATUS_SCHEMA_MISMATCH, Welcome, read_hello,
    recv_with_fds, status_message,
};
use libfuzzer_sys::fuzz_target;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType, socketpair};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const HELLO_LEN: usize = size_of::<Hello>();

/// Bytes a chunk list may carry in total (far below a socket buffer, so a
/// write never blocks or comes up short).
const MAX_BYTES: usize = 4096;

/// The fuzzer's bytes, read as:
///
/// * byte 0: bit 0, whether the client hangs up after its bytes; bits 1..8,
///   the seed of the chunk sizes (1 to 33 bytes each) the client sends in;
/// * bytes 1..3: `n`, little-endian: how many of the following bytes the
///   client sends (fewer if the input is shorter);
/// * those `n` bytes, then the rest: what a server sends to a client (a
///   Welcome, then 16-byte control messages).
#[derive(Debug)]
struct Input<'a> {
    hello: &'a [u8],
    chunks: Vec<usize>,
    hang_up: bool,
    welcome_bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let b0 = data.first().copied().unwrap_or(0);
        let n = match data {
            [_, lo, hi, ..] => u16::from_le_bytes([*lo, *hi]) as usize,
            _ => 0,
        };
        let rest = data.get(3..).unwrap_or(&[]);
        let (hello, welcome_bytes) = rest.split_at(n.min(rest.len()));
        let hello = &hello[..hello.len().min(MAX_BYTES)];
        // xorshift32 over the seed: a reproducible chunking per seed.
        let mut x = (u32::from(b0 >> 1) | 0x100).wrapping_mul(0x9e37_79b9);
        let mut chunks = Vec::new();
        let mut total = 0;
        while total < hello.len() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let size = (1 + (x % 33) as usize).min(hello.len() - total);
            chunks.push(size);
            total += size;
        }
        Input {
            hello,
            chunks,
            hang_up: b0 & 1 == 1,
            welcome_bytes,
        }
    }
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .expect("socketpair")
}

fn send_all(sock: BorrowedFd<'_>, bytes: &[u8]) {
    let n = rustix::net::send(sock, bytes, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
        .expect("send to a socket with room");
    assert_eq!(n, bytes.len(), "a small send is never short");
}

/// The verdict the protocol prescribes for a Hello.
fn expected_status(h: &Hello) -> Option<u32> {
    if h.magic != HELLO_MAGIC {
        None
    } else if h.protocol != PROTOCOL_VERSION {
        Some(STATUS_PROTOCOL_MISMATCH)
    } else if h.format != FORMAT {
        Some(STATUS_FORMAT_MISMATCH)
    } else if h.schema != SCHEMA_HASH {
        Some(STATUS_SCHEMA_MISMATCH)
    } else {
        Some(STATUS_OK)
    }
}

fn server_side(input: &Input) {
    let (client, server) = pair();
    let mut buf = [0u8; HELLO_LEN];
    let mut got = 0;
    let mut sent: &[u8] = &[];
    let mut verdict = None;
    for &size in &input.chunks {
        let chunk = &input.hello[sent.len()..sent.len() + size];
        send_all(client.as_fd(), chunk);
        sent = &input.hello[..sent.len() + size];
        match read_hello(server.as_fd(), &mut buf, &mut got) {
            HelloRead::NeedMore => assert!(sent.len() < HELLO_LEN),
            HelloRead::Closed => panic!("closed while the client is connected"),
            HelloRead::Complete(h) => {
                verdict = Some(h);
                break;
            }
        }
    }
    match verdict {
        Some(h) => {
            assert!(sent.len() >= HELLO_LEN);
            assert_eq!(bytemuck::bytes_of(&h), &sent[..HELLO_LEN]);
            let status = h.check();
            assert_eq!(status, expected_status(&h));
            if let Some(s) = status {
                assert!(!status_message(s).is_empty());
            }
        }
        None => {
            assert_eq!(got, sent.len().min(HELLO_LEN));
            if input.hang_up {
                drop(client);
                let r = read_hello(server.as_fd(), &mut buf, &mut got);
                assert_eq!(r, HelloRead::Closed, "a hang-up before 32 bytes closes");
            }
        }
    }
}

fn client_side(input: &Input) {
    let bytes = &input.welcome_bytes[..input.welcome_bytes.len().min(MAX_BYTES)];
    let (server, client) = pair();
    if !bytes.is_empty() {
        send_all(server.as_fd(), bytes);
    }
    drop(server);
    let mut welcome = [0u8; size_of::<Welcome>()];
    match recv_with_fds(client.as_fd(), &mut welcome) {
        Ok(None) => assert!(bytes.is_empty()),
        Ok(Some(fds)) => {
            assert!(fds.is_empty());
            assert_eq!(&welcome[..], &bytes[..welcome.len()]);
            let w: Welcome = bytemuck::pod_read_unaligned(&welcome);
            assert!(!status_message(w.status).is_empty());
            // Then 16-byte control messages until the end of the stream.
            let mut rest = &bytes[welcome.len()..];
            loop {
                let mut msg = [0u8; 16];
                match recv_with_fds(client.as_fd(), &mut msg) {
                    Ok(None) => {
                        assert!(rest.is_empty());
                        break;
                    }
                    Ok(Some(_)) => {
                        assert_eq!(&msg[..], &rest[..16]);
                        rest = &rest[16..];
                    }
                    Err(_) => {
                        assert!(!rest.is_empty() && rest.len() < 16);
                        break;
                    }
                }
            }
        }
        Err(_) => assert!(!bytes.is_empty() && bytes.len() < welcome.len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    server_side(&input);
    client_side(&input);
});
