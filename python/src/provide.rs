//! What `Client` needs beyond blobs and the cache, written as free
//! functions on the Rust client: content digests, the blob a computation
//! returns (`get_or_compute`, which `@cradle.memoize` is built on), calls of
//! bytes methods, and Python providers of bytes methods (a run loop on a
//! Rust thread, the handlers called with the GIL). See
//! docs/architecture.md, "The Python package".

use crate::buffers::{Buffer, SealedBlob, Writer, blob_from, bytes_of, lock};
use crate::errors::{CradleError, blob_err, call_err};
use cradle_client::{
    Blob, BlobHandle, Call, CallError, CallOptions, Client, ErrorCode, HandlerError, Stopper,
    WaitMode,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Buffers at most this long are hashed with the GIL held.
const DIGEST_WITH_GIL: usize = 16 * 1024;

/// The BLAKE3-256 digest of the bytes of ``obj`` (anything with the buffer
/// protocol, C-contiguous), computed without the GIL (above 16 KiB): the content identity
/// ``@memoize`` keys arrays and buffers by.
#[pyfunction]
pub(crate) fn digest<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let (buf, ptr, len) = bytes_of(obj)?;
    let hash = move || {
        // SAFETY: `ptr..ptr+len` is the C-contiguous memory of `buf`, an
        // export this function holds until after the hash (neither freed
        // nor resized meanwhile).
        let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        blake3::hash(src)
    };
    // Releasing the GIL costs more than hashing a few KiB (a memoized
    // call's encoded arguments): only larger buffers are hashed without it.
    let d = if len <= DIGEST_WITH_GIL {
        hash()
    } else {
        py.detach(hash)
    };
    drop(buf);
    Ok(PyBytes::new(py, d.as_bytes()))
}

/// The sealed blob a computation or a handler returned: a ``Writer``
/// (sealed now), a ``SealedBlob`` (taken over), or anything with the buffer
/// protocol (copied into a new blob).
pub(crate) fn blob_of(c: &Arc<Client>, v: &Bound<'_, PyAny>) -> PyResult<Blob> {
    let py = v.py();
    if let Ok(w) = v.cast::<Writer>() {
        return w.get().seal_blob(py);
    }
    if let Ok(s) = v.cast::<SealedBlob>() {
        return s.get().take_blob();
    }
    let (buf, ptr, len) = bytes_of(v).map_err(|_| {
        PyTypeError::new_err(format!(
            "expected a Writer, a SealedBlob or a bytes-like object, not {}",
            type_name(v)
        ))
    })?;
    let c = Arc::clone(c);
    let r = py.detach(move || blob_from(&c, ptr, len));
    drop(buf);
    r.map_err(blob_err)
}

/// The name of `v`'s type, for messages.
fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The blob ``key`` holds, computed by ``compute()`` (with the GIL) if no
/// process has put it yet, once across processes.
pub(crate) fn get_or_compute(
    py: Python<'_>,
    c: Arc<Client>,
    key: &str,
    compute: Py<PyAny>,
    claim: Duration,
) -> PyResult<Buffer> {
    let r = py.detach(|| {
        c.cache().get_or_compute(key, claim, || {
            Python::attach(|py| {
                let v = compute.bind(py).call0()?;
                blob_of(&c, &v)
            })
        })
    });
    match r {
        Ok(b) => Ok(Buffer::new(b)),
        Err(cradle_client::ComputeError::Cache(e)) => Err(blob_err(e)),
        Err(cradle_client::ComputeError::Compute(e)) => Err(e),
    }
}

/// What a blob argument of a call is: a handle we lease already, or a new
/// blob made from bytes (released after the call).
enum Arg {
    Handle(BlobHandle),
    Made(Blob),
}

/// What a value passed in ``blobs=`` is.
fn arg_of(c: &Arc<Client>, v: &Bound<'_, PyAny>) -> PyResult<Arg> {
    if let Ok(b) = v.cast::<Buffer>() {
        return Ok(Arg::Handle(b.get().blob_handle()?));
    }
    if let Ok(s) = v.cast::<SealedBlob>() {
        return Ok(Arg::Handle(s.get().blob_handle()?));
    }
    Ok(Arg::Made(blob_of(c, v)?))
}

/// Calls the bytes method ``name@version``: returns the response body and
/// the result blobs as ``Buffer``s.
pub(crate) fn call_bytes<'py>(
    py: Python<'py>,
    c: Arc<Client>,
    name: &str,
    version: u32,
    body: &Bound<'py, PyAny>,
    blobs: &[Bound<'py, PyAny>],
    timeout: Duration,
) -> PyResult<(Bound<'py, PyBytes>, Vec<Buffer>)> {
    let (buf, ptr, len) = bytes_of(body)?;
    // SAFETY: `buf` exports `ptr..ptr+len` (C-contiguous) until dropped
    // below; the bytes are copied here, with the GIL held.
    let body = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec();
    drop(buf);
    let args = blobs
        .iter()
        .map(|b| arg_of(&c, b))
        .collect::<PyResult<Vec<_>>>()?;
    let opts = CallOptions {
        timeout,
        wait: WaitMode::default(),
    };
    let r = py.detach(|| {
        let handles: Vec<&BlobHandle> = args
            .iter()
            .map(|a| match a {
                Arg::Handle(h) => h,
                Arg::Made(b) => b.handle(),
            })
            .collect();
        let r = c.call_bytes_opts(name, version, &body, &handles, opts);
        for a in args {
            if let Arg::Made(b) = a {
                b.release_now();
            }
        }
        r
    });
    let (resp, results) = r.map_err(blob_err)?;
    Ok((
        PyBytes::new(py, &resp),
        results.into_iter().map(Buffer::new).collect(),
    ))
}

/// A result blob given as a `Buffer`: passed on with a new lease of ours.
struct Leased(BlobHandle);

/// A handler's answer: the body, and each result blob, new or leased.
type Answer = (Vec<u8>, Vec<Result<Blob, Leased>>);

/// The handler of one bytes method: calls ``f(body, blobs)`` with the GIL.
fn handle(
    f: &Py<PyAny>,
    c: &Arc<Client>,
    call: &mut Call<'_>,
    body: &[u8],
) -> Result<Vec<u8>, HandlerError> {
    let blobs = call.take_blobs();
    Python::attach(|py| {
        let out = (|| -> PyResult<Answer> {
            let args = PyList::empty(py);
            for b in blobs {
                args.append(Py::new(py, Buffer::new(b))?)?;
            }
            let v = f.bind(py).call1((PyBytes::new(py, body), args))?;
            let (body, results) = match v.cast::<PyTuple>() {
                Ok(t) if t.len() == 2 => (t.get_item(0)?, Some(t.get_item(1)?)),
                _ => (v, None),
            };
            let body = if body.is_none() {
                Vec::new()
            } else {
                let (buf, ptr, len) = bytes_of(&body).map_err(|_| {
                    PyTypeError::new_err(format!(
                        "a handler returns bytes or (bytes, [blobs]), not {}",
                        type_name(&body)
                    ))
                })?;
                // SAFETY: `buf` exports `ptr..ptr+len` until dropped
                // below; copied with the GIL held.
                let v = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec();
                drop(buf);
                v
            };
            let mut out = Vec::new();
            if let Some(results) = results {
                for r in results.try_iter()? {
                    let r = r?;
                    if let Ok(b) = r.cast::<Buffer>() {
                        out.push(Err(Leased(b.get().blob_handle()?)));
                    } else {
                        out.push(Ok(blob_of(c, &r)?));
                    }
                }
            }
            Ok((body, out))
        })();
        match out {
            Ok((body, results)) => {
                for r in results {
                    match r {
                        Ok(blob) => call.attach(blob),
                        // A blob we read: a lease of our own, passed on.
                        Err(Leased(h)) => {
                            let b = py.detach(|| c.get(&h))?;
                            call.attach_ref(b);
                        }
                    }
                }
                Ok(body)
            }
            Err(e) => Err(HandlerError::new(ErrorCode::Handler, e.to_string())),
        }
    })
}

/// The running provider of a client (to stop it).
pub(crate) type Serving = Mutex<Option<Stopper>>;

/// Serves ``methods`` (name, version, handler) with ``concurrency``
/// threads until stopped, a signal's exception (KeyboardInterrupt), or the
/// session's failure. Waits with the GIL released, checking for signals
/// every 100 ms.
pub(crate) fn serve(
    py: Python<'_>,
    c: Arc<Client>,
    serving: &Serving,
    methods: Vec<(String, u32, Py<PyAny>, bool)>,
    concurrency: u32,
) -> PyResult<(u64, u64)> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("cradle-provider".into())
        .spawn(move || {
            let cc = Arc::clone(&c);
            let mut p = c.provider().concurrency(concurrency);
            for (name, version, f, memoized) in methods {
                let cc = Arc::clone(&cc);
                p = p.serve_bytes(&name, version, move |call, body| {
                    handle(&f, &cc, call, body)
                });
                if memoized {
                    p = p.memoized();
                }
            }
            let _ = stop_tx.send(p.stopper());
            let r = p.run();
            let _ = done_tx.send(());
            r
        })
        .map_err(|e| CradleError::new_err(format!("cannot start the provider thread: {e}")))?;
    let stopper = py.detach(move || stop_rx.recv()).ok();
    *lock(serving) = stopper.clone();
    let mut interrupted = None;
    let mut rx = done_rx;
    loop {
        let (r, back) = py.detach(move || (rx.recv_timeout(Duration::from_millis(100)), rx));
        rx = back;
        match r {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupted.is_none()
                    && let Err(e) = py.check_signals()
                {
                    if let Some(s) = &stopper {
                        s.stop();
                    }
                    interrupted = Some(e);
                }
            }
            _ => break,
        }
    }
    *lock(serving) = None;
    let r = py.detach(|| thread.join());
    if let Some(e) = interrupted {
        return Err(e);
    }
    match r {
        Ok(Ok(rep)) => Ok((rep.served, rep.errors)),
        Ok(Err(e)) => Err(call_err(e)),
        Err(_) => Err(call_err(CallError::PeerDead)),
    }
}
