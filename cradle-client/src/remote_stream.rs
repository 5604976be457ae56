//! Downloads (`DownloadBlob`, `CacheGet`) read straight off the HTTP/2
//! body: the `DownloadChunk` messages are parsed as their bytes arrive and
//! each chunk's data goes once, from the HTTP/2 frame, into the caller's
//! buffer and the hasher (architecture.md §16, "Downloads without a
//! copy"). tonic's `Streaming` first gathers every message whole into a
//! buffer of its own (one more copy of every byte), which is what this
//! replaces; everything else (the channel, TLS, HTTP/2 flow control, the
//! token, the deadline, gRPC statuses) is the same as a generated call's.

use crate::remote_error::{GatewayError, MAX_DIGEST_FIELD};
use http_body::Body as HttpBody;
use tonic::codegen::http::{self, HeaderValue};
use tonic::codegen::{Bytes, Service};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The `grpc-timeout` value of `d` (at most 8 digits, as gRPC asks).
fn grpc_timeout(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// A one-message request body.
struct Once(Option<Bytes>);

impl HttpBody for Once {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// Where a download's bytes go: the destination buffer and the hasher,
/// fed the same slices in the same order.
pub(crate) struct Sink {
    pub(crate) out: Vec<u8>,
    pub(crate) hasher: blake3::Hasher,
    /// The length announced by the first message.
    pub(crate) size: Option<u64>,
}

impl Sink {
    /// Appends `b`, then hashes what was appended, from the destination
    /// (still in cache): the bytes hashed are the bytes handed over.
    fn data(&mut self, b: &[u8]) {
        let start = self.out.len();
        self.out.extend_from_slice(b);
        self.hasher.update(&self.out[start..]);
    }
}

/// What the parser waits for next.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// The 5-byte gRPC message prefix.
    Prefix,
    /// A field's tag (varint).
    Tag,
    /// A varint field's value.
    Varint(u32),
    /// The length of a length-delimited field.
    Len(u32),
    /// The payload of a length-delimited field, `left` bytes more.
    Payload { field: u32, left: usize },
    /// A fixed-width field to skip.
    Skip(usize),
}

/// Parses a stream of length-prefixed `DownloadChunk` messages from
/// arbitrary slices: field 1 (`size`, varint), field 2 (`data`, streamed
/// to the sink), field 3 (`blake3`, at most 32 bytes, kept); other fields
/// are skipped as protobuf says.
pub(crate) struct ChunkParser {
    want: Want,
    /// Bytes of a prefix or varint split across slices.
    acc: Vec<u8>,
    /// Bytes left in the current message (after its prefix).
    msg_left: usize,
    /// The `blake3` field of the current message.
    blake3: Vec<u8>,
    started: bool,
}

/// What a slice completed.
pub(crate) enum Parsed {
    /// More bytes are needed.
    More,
    /// A message with a digest ended: the transfer is complete.
    Done(Vec<u8>),
}

fn protocol(m: &str) -> GatewayError {
    GatewayError::Protocol(m.to_owned())
}

impl ChunkParser {
    pub(crate) fn new() -> Self {
        Self {
            want: Want::Prefix,
            acc: Vec::with_capacity(16),
            msg_left: 0,
            blake3: Vec::new(),
            started: false,
        }
    }

    /// A varint from `acc` plus `buf`; `None` while incomplete.
    fn varint(&mut self, buf: &mut &[u8]) -> Result<Option<u64>, GatewayError> {
        while let Some((&b, rest)) = buf.split_first() {
            *buf = rest;
            self.acc.push(b);
            self.msg_left = self
                .msg_left
                .checked_sub(1)
                .ok_or_else(|| protocol("a field runs past its message"))?;
            if b & 0x80 == 0 {
                let mut v = 0u64;
                for (i, &x) in self.acc.iter().enumerate() {
                    v |= u64::from(x & 0x7f) << (7 * i);
                }
                self.acc.clear();
                return Ok(Some(v));
            }
            if self.acc.len() >= 10 {
                return Err(protocol("a varint longer than 10 bytes"));
            }
        }
        Ok(None)
    }

    /// After a field: the next tag, or the end of the message.
    fn field_done(&mut self) -> Option<Vec<u8>> {
        if self.msg_left > 0 {
            self.want = Want::Tag;
            return None;
        }
        self.want = Want::Prefix;
        if self.blake3.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.blake3))
    }

    /// Feeds `buf`; `Done` with the announced digest once a message that
    /// carries one has ended (the bytes after it are not read).
    pub(crate) fn feed(&mut self, mut buf: &[u8], sink: &mut Sink) -> Result<Parsed, GatewayError> {
        while !buf.is_empty() || matches!(self.want, Want::Payload { left: 0, .. }) {
            match self.want {
                Want::Prefix => {
                    let n = (5 - self.acc.len()).min(buf.len());
                    self.acc.extend_from_slice(&buf[..n]);
                    buf = &buf[n..];
                    if self.acc.len() < 5 {
                        continue;
                    }
                    if self.acc[0] != 0 {
                        return Err(protocol("a compressed message (none was asked for)"));
                    }
                    let len =
                        u32::from_be_bytes([self.acc[1], self.acc[2], self.acc[3], self.acc[4]]);
                    self.acc.clear();
                    self.msg_left = len as usize;
                    self.blake3.clear();
                    if self.msg_left == 0 {
                        // An empty message: no digest, nothing to add.
                        continue;
                    }
                    self.want = Want::Tag;
                }
                Want::Tag => {
                    let Some(tag) = self.varint(&mut buf)? else {
                        continue;
                    };
                    let field = u32::try_from(tag >> 3)
                        .map_err(|_| protocol("a field number out of range"))?;
                    self.want = match tag & 7 {
                        0 => Want::Varint(field),
                        1 => Want::Skip(8),
                        2 => Want::Len(field),
                        5 => Want::Skip(4),
                        _ => return Err(protocol("an unknown protobuf wire type")),
                    };
                }
                Want::Varint(field) => {
                    let Some(v) = self.varint(&mut buf)? else {
                        continue;
                    };
                    if field == 1 && v != 0 {
                        sink.size = Some(v);
                        if !self.started {
                            let size = usize::try_from(v)
                                .map_err(|_| protocol("a blob larger than memory"))?;
                            sink.out.reserve_exact(size);
                        }
                    }
                    self.started = true;
                    if let Some(d) = self.field_done() {
                        return Ok(Parsed::Done(d));
                    }
                }
                Want::Len(field) => {
                    let Some(len) = self.varint(&mut buf)? else {
                        continue;
                    };
                    let left = usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= self.msg_left)
                        .ok_or_else(|| protocol("a field runs past its message"))?;
                    if field == 3 && left > MAX_DIGEST_FIELD {
                        return Err(protocol("a digest field longer than a digest"));
                    }
                    self.want = Want::Payload { field, left };
                }
                Want::Payload { field, left } => {
                    let n = left.min(buf.len());
                    let (now, rest) = buf.split_at(n);
                    buf = rest;
                    self.msg_left -= n;
                    match field {
                        2 => {
                            // Never more than the first message announced.
                            let announced = sink.size.unwrap_or(0);
                            if (sink.out.len() + now.len()) as u64 > announced {
                                return Err(protocol("more bytes than the announced size"));
                            }
                            sink.data(now)
                        }
                        3 => self.blake3.extend_from_slice(now),
                        _ => {}
                    }
                    self.started = true;
                    if left > n {
                        self.want = Want::Payload {
                            field,
                            left: left - n,
                        };
                        continue;
                    }
                    if let Some(d) = self.field_done() {
                        return Ok(Parsed::Done(d));
                    }
                }
                Want::Skip(n) => {
                    if n > self.msg_left {
                        return Err(protocol("a field runs past its message"));
                    }
                    self.want = Want::Payload { field: 0, left: n };
                }
            }
        }
        Ok(Parsed::More)
    }
}

/// Sends the unary-request, streaming-response call `path` with `msg`
/// (already protobuf-encoded) and feeds the response's chunks into `sink`
/// until the message with the digest; answers that digest. A gRPC status
/// other than OK (in the headers of a trailers-only answer, or in the
/// trailers) is `GatewayError::from(status)`.
pub(crate) async fn server_stream(
    channel: &mut Channel,
    path: &'static str,
    msg: &[u8],
    token: &HeaderValue,
    timeout: std::time::Duration,
    sink: &mut Sink,
    mut on_data: impl FnMut(usize),
) -> Result<Vec<u8>, GatewayError> {
    let len = u32::try_from(msg.len()).map_err(|_| protocol("a request larger than 4 GiB"))?;
    let mut framed = Vec::with_capacity(5 + msg.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    let mut req = http::Request::new(tonic::body::Body::new(Once(Some(Bytes::from(framed)))));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static(path);
    *req.version_mut() = http::Version::HTTP_2;
    let h = req.headers_mut();
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(cradle_proto::AUTHORIZATION, token.clone());
    if let Ok(v) = HeaderValue::from_str(&grpc_timeout(timeout)) {
        h.insert("grpc-timeout", v);
    }
    let transport =
        |e: tonic::transport::Error| GatewayError::from(Status::from_error(Box::new(e)));
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(transport)?;
    let resp = channel.call(req).await.map_err(transport)?;
    if let Some(s) = Status::from_header_map(resp.headers())
        && s.code() != Code::Ok
    {
        return Err(s.into());
    }
    if resp.status() != http::StatusCode::OK {
        return Err(protocol(&format!("HTTP status {}", resp.status())));
    }
    let mut body = resp.into_body();
    let mut parser = ChunkParser::new();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let frame = match frame {
            None => return Err(protocol("the transfer ended without its digest")),
            Some(Err(s)) => return Err(s.into()),
            Some(Ok(f)) => f,
        };
        match frame.into_data() {
            Ok(data) => {
                let before = sink.out.len();
                let r = parser.feed(&data, sink)?;
                on_data(sink.out.len() - before);
                if let Parsed::Done(d) = r {
                    return Ok(d);
                }
            }
            Err(frame) => {
                if let Some(s) = frame.trailers_ref().and_then(Status::from_header_map)
                    && s.code() != Code::Ok
                {
                    return Err(s.into());
                }
                return Err(protocol("the transfer ended without its digest"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cradle_proto::v1::DownloadChunk;
    use prost::Message;

    fn framed(m: &DownloadChunk) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut v = vec![0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn stream(data: &[u8], chunk: usize) -> (Vec<u8>, [u8; 32]) {
        let mut wire = Vec::new();
        for (i, c) in data.chunks(chunk).enumerate() {
            wire.extend(framed(&DownloadChunk {
                size: if i == 0 { data.len() as u64 } else { 0 },
                data: Bytes::copy_from_slice(c),
                blake3: Vec::new(),
            }));
        }
        let hash = *blake3::hash(data).as_bytes();
        wire.extend(framed(&DownloadChunk {
            size: 0,
            data: Bytes::new(),
            blake3: hash.to_vec(),
        }));
        (wire, hash)
    }

    fn sink() -> Sink {
        Sink {
            out: Vec::new(),
            hasher: blake3::Hasher::new(),
            size: None,
        }
    }

    /// Every split of the wire into slices, down to one byte, gives the
    /// same bytes, the same hash and the announced digest.
    #[test]
    fn parses_across_any_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let (wire, hash) = stream(&data, 300);
        for step in [1, 2, 3, 5, 7, 64, 299, 300, 301, 4096] {
            let (mut p, mut s) = (ChunkParser::new(), sink());
            let mut done = None;
            for piece in wire.chunks(step) {
                if let Parsed::Done(d) = p.feed(piece, &mut s).unwrap() {
                    done = Some(d);
                }
            }
            assert_eq!(done.as_deref(), Some(&hash[..]), "step {step}");
            assert_eq!(s.out, data, "step {step}");
            assert_eq!(s.hasher.finalize().as_bytes(), &hash);
            assert_eq!(s.size, Some(1000));
        }
    }

    /// An empty blob: one message with the digest only.
    #[test]
    fn empty_blob() {
        let (wire, hash) = stream(&[], 10);
        let (mut p, mut s) = (ChunkParser::new(), sink());
        let Parsed::Done(d) = p.feed(&wire, &mut s).unwrap() else {
            panic!("not done");
        };
        assert_eq!(d, hash);
        assert!(s.out.is_empty());
    }

    /// Data past the size the first message announced is refused.
    #[test]
    fn refuses_more_than_announced() {
        let mut wire = framed(&DownloadChunk {
            size: 3,
            data: Bytes::from_static(b"abc"),
            blake3: Vec::new(),
        });
        wire.extend(framed(&DownloadChunk {
            size: 0,
            data: Bytes::from_static(b"d"),
            blake3: Vec::new(),
        }));
        let (mut p, mut s) = (ChunkParser::new(), sink());
        assert!(matches!(
            p.feed(&wire, &mut s),
            Err(GatewayError::Protocol(_))
        ));
    }

    /// A field longer than its message, a compressed message and an
    /// oversized digest field are protocol errors, not panics.
    #[test]
    fn refuses_malformed() {
        let (mut p, mut s) = (ChunkParser::new(), sink());
        // message of 3 bytes: field 2, length 100
        let wire = [0, 0, 0, 0, 3, 0x12, 100, 1];
        assert!(matches!(
            p.feed(&wire, &mut s),
            Err(GatewayError::Protocol(_))
        ));
        let (mut p, mut s) = (ChunkParser::new(), sink());
        assert!(matches!(
            p.feed(&[1, 0, 0, 0, 1, 0], &mut s),
            Err(GatewayError::Protocol(_))
        ));
        let (mut p, mut s) = (ChunkParser::new(), sink());
        let mut wire = vec![0, 0, 0, 0, 102, 0x1a, 100];
        wire.extend([0u8; 100]);
        assert!(matches!(
            p.feed(&wire, &mut s),
            Err(GatewayError::Protocol(_))
        ));
    }

    /// Unknown fields of every wire type are skipped.
    #[test]
    fn skips_unknown_fields() {
        // field 9 varint 5; field 10 fixed64; field 11 bytes "xy"; field 12
        // fixed32; field 3 (blake3) 1 byte.
        let mut body = vec![0x48, 5, 0x51];
        body.extend([0u8; 8]);
        body.extend([0x5a, 2, b'x', b'y', 0x65, 0, 0, 0, 0, 0x1a, 1, 9]);
        let mut wire = vec![0];
        wire.extend((body.len() as u32).to_be_bytes());
        wire.extend(&body);
        let (mut p, mut s) = (ChunkParser::new(), sink());
        let Parsed::Done(d) = p.feed(&wire, &mut s).unwrap() else {
            panic!("not done");
        };
        assert_eq!(d, [9]);
        assert!(s.out.is_empty());
    }
}
