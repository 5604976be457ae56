//! The two downloads (`DownloadBlob`, `CacheGet`) answered without a copy:
//! each `DownloadChunk` leaves as a few bytes of gRPC and protobuf framing
//! followed by the chunk itself, a `Bytes` slice of the leased shared
//! memory, so the chunk's bytes are first copied by TLS as it encrypts
//! them. tonic's generated handler would encode every message into a
//! buffer of its own first (one copy of every byte). Everything else is
//! the generated service's: the token check runs before this service, the
//! other RPCs go to the generated server, and the chunks come from the
//! same `Service::stream` as before.

use crate::service::Service as Gateway;
use cradle_proto::v1::gateway_server::GatewayServer;
use cradle_proto::v1::{CacheGetRequest, DownloadChunk, DownloadRequest};
use http_body::{Body as HttpBody, Frame};
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{Bytes, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tracing::Instrument;

const DOWNLOAD_BLOB: &str = "/cradle.gateway.v1.Gateway/DownloadBlob";
const CACHE_GET: &str = "/cradle.gateway.v1.Gateway/CacheGet";

/// The generated server, with the two downloads answered here.
#[derive(Clone)]
pub(crate) struct Downloads {
    pub(crate) inner: GatewayServer<Gateway>,
    pub(crate) service: Arc<Gateway>,
    /// The largest request message accepted (the server's decoding limit).
    pub(crate) max_message_bytes: usize,
}

impl NamedService for Downloads {
    const NAME: &'static str = <GatewayServer<Gateway> as NamedService>::NAME;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl Service<http::Request<Body>> for Downloads {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        let path = req.uri().path();
        if path != DOWNLOAD_BLOB && path != CACHE_GET {
            return Box::pin(self.inner.call(req));
        }
        let download = path == DOWNLOAD_BLOB;
        let service = self.service.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            let r = async {
                let msg = read_message(req.into_body(), max).await?;
                let chunks = if download {
                    let req = DownloadRequest::decode(msg).map_err(malformed)?;
                    service
                        .do_download(req)
                        .instrument(tracing::info_span!("download_blob"))
                        .await?
                } else {
                    let req = CacheGetRequest::decode(msg).map_err(malformed)?;
                    let span = tracing::info_span!("cache_get", key = %req.key);
                    service.do_cache_get(req).instrument(span).await?
                };
                Ok::<_, Status>(chunks)
            }
            .await;
            Ok(match r {
                Ok(chunks) => {
                    let mut resp = http::Response::new(Body::new(ChunkBody {
                        chunks,
                        data: None,
                        done: false,
                    }));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    resp
                }
                Err(s) => s.into_http(),
            })
        })
    }
}

fn malformed(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("a malformed request: {e}"))
}

/// The one gRPC message of a unary request body (uncompressed, at most
/// `max` bytes).
async fn read_message(mut body: Body, max: usize) -> Result<Bytes, Status> {
    let mut buf = Vec::new();
    while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(d) = f?.into_data() {
            if buf.len() + d.len() > max.saturating_add(5) {
                return Err(Status::resource_exhausted(format!(
                    "a request larger than {max} bytes"
                )));
            }
            buf.extend_from_slice(&d);
        }
    }
    if buf.len() < 5 {
        return Err(Status::invalid_argument("a request without its message"));
    }
    if buf[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not accepted",
        ));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() != 5 + len {
        return Err(Status::invalid_argument(
            "a request body that is not one message",
        ));
    }
    Ok(Bytes::from(buf).slice(5..))
}

/// Protobuf's varint encoding of `v` into `out`.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes of a `DownloadChunk` up to its data: the gRPC prefix (the
/// whole message's length), the `size` and `blake3` fields, and the
/// `data` field's tag and length. Protobuf lets fields come in any order.
fn head(c: &DownloadChunk) -> Bytes {
    let fields = DownloadChunk {
        size: c.size,
        data: Bytes::new(),
        blake3: c.blake3.clone(),
    }
    .encode_to_vec();
    let mut data_head = Vec::with_capacity(11);
    if !c.data.is_empty() {
        data_head.push(0x12); // field 2, length-delimited
        put_varint(&mut data_head, c.data.len() as u64);
    }
    let len = fields.len() + data_head.len() + c.data.len();
    let mut out = Vec::with_capacity(5 + fields.len() + data_head.len());
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&fields);
    out.extend_from_slice(&data_head);
    Bytes::from(out)
}

/// The response body: for each chunk its head, then its data (the same
/// `Bytes`, not copied); then the trailers with the status.
struct ChunkBody {
    chunks: crate::service::ChunkStream,
    /// The data of the chunk whose head went last.
    data: Option<Bytes>,
    done: bool,
}

fn trailers(status: &Status) -> HeaderMap {
    let mut h = HeaderMap::new();
    if status.add_header(&mut h).is_err() {
        h.insert("grpc-status", HeaderValue::from(Code::Internal as i32));
    }
    h
}

impl HttpBody for ChunkBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.chunks).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(c))) => {
                let h = head(&c);
                if !c.data.is_empty() {
                    self.data = Some(c.data);
                }
                Poll::Ready(Some(Ok(Frame::data(h))))
            }
            Poll::Ready(Some(Err(s))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&s)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.data.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head plus the data decode as the same message prost encodes.
    #[test]
    fn head_and_data_are_one_message() {
        for (size, data, blake3) in [
            (5u64, &b"hello"[..], Vec::new()),
            (0, &[][..], vec![7u8; 32]),
            (1 << 20, &[9u8; 300][..], Vec::new()),
        ] {
            let c = DownloadChunk {
                size,
                data: Bytes::copy_from_slice(data),
                blake3: blake3.clone(),
            };
            let mut wire = head(&c).to_vec();
            wire.extend_from_slice(&c.data);
            let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
            assert_eq!((wire[0], wire.len()), (0, 5 + len));
            let back = DownloadChunk::decode(&wire[5..]).unwrap();
            assert_eq!(back, c);
        }
    }
}
