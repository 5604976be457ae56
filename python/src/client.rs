//! `cradle.Client`: one session with the server, through the sync Rust
//! [`cradle_client::Client`]. Every call that waits runs with the GIL
//! released (`Python::detach`), so threads share one client.

use crate::buffers::{Buffer, Writer, blob_into, bytes_of, lock};
use crate::errors::{CradleError, blob_err, call_err, connect_err};
use crate::provide;
use crate::spares::{self, Spares};
use cradle_client::{BlobError, ClientOptions};
use ipc_rpc::blob::{CacheList, ListRequest};
use ipc_rpc::builtin::{Ping, Stats};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A connection to the CRADLE server: one session, its own rings in shared
/// memory.
///
/// ``Client(socket=None, timeout=None, spare_bytes=512 MiB)``: ``socket``
/// is the server's socket path (default: ``$CRADLE_SOCKET``, else the
/// server's default path, as for the ``cradle`` command); ``timeout`` is
/// every call's deadline in seconds (default 30); ``spare_bytes`` caps the
/// large blobs the client prepares ahead, off the caller's thread, for a
/// length it puts or creates repeatedly (0: none; see ``spare_bytes``). Usable from several threads at once (the GIL is released
/// while a call waits) and as a context manager (``close()`` on exit).
/// After ``fork()`` the child must make its own client.
#[pyclass(name = "Client", module = "cradle", frozen, subclass)]
pub(crate) struct Client {
    inner: Mutex<Option<Arc<cradle_client::Client>>>,
    socket: PathBuf,
    /// Every call's deadline.
    timeout: Duration,
    /// The provider `serve` runs, to stop it.
    serving: provide::Serving,
    /// Large blobs prepared ahead for `put` and `create` (`spares.rs`).
    spares: Spares,
}

impl Client {
    /// The Rust client, unless closed.
    fn client(&self) -> PyResult<Arc<cradle_client::Client>> {
        lock(&self.inner)
            .clone()
            .ok_or_else(|| CradleError::new_err("this client is closed"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The spares hold the session open: give them back with the client.
        self.spares.close();
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (socket = None, timeout = None, spare_bytes = spares::DEFAULT_CAP))]
    fn new(
        py: Python<'_>,
        socket: Option<PathBuf>,
        timeout: Option<f64>,
        spare_bytes: usize,
    ) -> PyResult<Self> {
        let socket = socket.unwrap_or_else(cradle_client::default_socket_path);
        let mut opts = ClientOptions::default();
        if let Some(t) = timeout {
            opts.timeout = Duration::try_from_secs_f64(t).map_err(|_| {
                PyValueError::new_err("timeout must be a positive number of seconds")
            })?;
        }
        let path = socket.clone();
        let c = py
            .detach(move || cradle_client::Client::connect_with(&path, opts))
            .map_err(connect_err)?;
        Ok(Self {
            inner: Mutex::new(Some(Arc::new(c))),
            socket,
            timeout: opts.timeout,
            serving: Mutex::new(None),
            spares: Spares::new(spare_bytes),
        })
    }

    /// The socket path this client connected to.
    #[getter]
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// This session's id (as ``cradle stats`` lists it).
    #[getter]
    fn session_id(&self) -> PyResult<u64> {
        Ok(self.client()?.session_id())
    }

    /// The server's pid.
    #[getter]
    fn server_pid(&self) -> PyResult<u32> {
        Ok(self.client()?.server_pid())
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    /// A round trip to the server: returns ``data`` echoed.
    #[pyo3(signature = (data = b"".as_slice()))]
    fn ping(&self, py: Python<'_>, data: &[u8]) -> PyResult<Vec<u8>> {
        let c = self.client()?;
        let req = data.to_vec();
        py.detach(move || c.call::<Ping>(&req)).map_err(call_err)
    }

    /// The server's figures as a dict: ``pid``, ``workers``, ``uptime_ms``,
    /// ``sessions``, ``sessions_total``, ``calls_served``,
    /// ``sessions_killed``, ``wake_syscalls``, ``blobs`` (a dict: blobs,
    /// leases, both cache tiers) and ``per_session`` (a list of dicts:
    /// ``id``, ``pid``, ``calls``, ``leases``, ``pinned_bytes``, ...).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.client()?;
        let s = py.detach(move || c.call::<Stats>(&())).map_err(call_err)?;
        let d = PyDict::new(py);
        macro_rules! put {
            ($d:ident, $s:expr, $($f:ident),*) => { $( $d.set_item(stringify!($f), $s.$f)?; )* };
        }
        put!(
            d,
            s,
            pid,
            workers,
            uptime_ms,
            sessions,
            sessions_total,
            calls_served,
            sessions_killed,
            wake_syscalls
        );
        let b = PyDict::new(py);
        put!(
            b,
            s.blobs,
            blobs,
            blob_bytes,
            large_blobs,
            writing,
            pool_segments,
            pool_capacity,
            pool_used,
            author_pools,
            leases,
            cache_entries,
            cache_bytes,
            cache_budget,
            hits,
            misses,
            evictions,
            cache_full,
            disk_enabled,
            disk_entries,
            disk_bytes,
            disk_budget,
            disk_hits,
            disk_misses,
            disk_corruptions,
            disk_evictions,
            disk_queued
        );
        d.set_item("blobs", b)?;
        let per = PyList::empty(py);
        for p in &s.per_session {
            let e = PyDict::new(py);
            put!(
                e,
                p,
                id,
                pid,
                calls,
                in_flight,
                backlog,
                leases,
                pinned_bytes,
                pool_bytes
            );
            per.append(e)?;
        }
        d.set_item("per_session", per)?;
        Ok(d)
    }

    /// Stores the bytes of ``obj`` under ``key``, replacing what was there.
    /// ``obj`` is anything with the buffer protocol (bytes, bytearray,
    /// memoryview, a C-contiguous numpy array of any dtype and shape): its
    /// bytes are copied once, straight into shared memory, without the GIL.
    /// The dtype and shape are not kept: use ``put_array`` for that.
    fn put(&self, py: Python<'_>, key: &str, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.client()?;
        let (buf, ptr, len) = bytes_of(obj)?;
        let spares = &self.spares;
        let r = py.detach(move || {
            let blob = blob_into(spares.writer(&c, len)?, ptr, len)?;
            let r = c.cache().put(key, &blob);
            blob.release_now();
            spares.refill(&c, len);
            r.map_err(BlobError::Call)
        });
        drop(buf);
        r.map_err(blob_err)
    }

    /// ``put`` unless ``key`` exists; whether it stored.
    fn put_if_absent(&self, py: Python<'_>, key: &str, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
        let c = self.client()?;
        let (buf, ptr, len) = bytes_of(obj)?;
        let spares = &self.spares;
        let r = py.detach(move || {
            let blob = blob_into(spares.writer(&c, len)?, ptr, len)?;
            let r = c.cache().put_if_absent(key, &blob);
            blob.release_now();
            spares.refill(&c, len);
            r.map_err(BlobError::Call)
        });
        drop(buf);
        r.map_err(blob_err)
    }

    /// Starts a blob of ``nbytes`` bytes and returns its ``Writer``: a
    /// writable buffer over the shared memory itself (fill it in place, then
    /// ``seal()`` or ``put(key)``): no copy at all for a large blob.
    fn create(&self, py: Python<'_>, nbytes: usize) -> PyResult<Writer> {
        let c = self.client()?;
        let c2 = Arc::clone(&c);
        let spares = &self.spares;
        let w = py
            .detach(move || spares.writer(&c2, nbytes))
            .map_err(blob_err)?;
        Ok(Writer::new(c, self.spares.clone(), w))
    }

    /// The blob under ``key`` as a read-only ``Buffer`` over the shared
    /// pages (no copy), or None on a miss. A key only in the disk tier is
    /// loaded into memory first. The lease lives as long as the Buffer or
    /// any view made from it.
    fn get(&self, py: Python<'_>, key: &str) -> PyResult<Option<Buffer>> {
        let c = self.client()?;
        let r = py.detach(move || c.cache().get(key)).map_err(blob_err)?;
        Ok(r.map(Buffer::new))
    }

    /// Removes ``key`` from memory and disk; whether it was in either.
    /// Readers keep their blobs.
    fn remove(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let c = self.client()?;
        py.detach(move || c.cache().remove(key)).map_err(call_err)
    }

    /// The keys of both tiers that start with ``prefix``, in order.
    #[pyo3(signature = (prefix = ""))]
    fn keys(&self, py: Python<'_>, prefix: &str) -> PyResult<Vec<String>> {
        let c = self.client()?;
        py.detach(move || {
            let mut keys = Vec::new();
            let mut after = String::new();
            loop {
                let page = c.call::<CacheList>(&ListRequest {
                    prefix: prefix.to_owned(),
                    after: after.clone(),
                    limit: 10_000,
                })?;
                let more = page.more;
                keys.extend(page.keys.into_iter().map(|k| k.key));
                match keys.last() {
                    // `more` with an empty page would loop for ever: stop.
                    Some(last) if more && *last != after => after = last.clone(),
                    _ => return Ok(keys),
                }
            }
        })
        .map_err(call_err)
    }

    /// The blob under ``key`` as a read-only ``Buffer``, computed by
    /// ``compute()`` if no process has put it yet, and computed **once**
    /// across processes: one caller at a time holds the claim on the key
    /// (for at most ``claim`` seconds), the others wait in the server (GIL
    /// released) and receive its blob. ``compute`` is called with the GIL
    /// and returns a ``Writer`` (sealed here), a ``SealedBlob`` or
    /// bytes-like data (copied); its result is put under ``key``. If it
    /// raises, the claim is given back (the next waiter computes) and the
    /// exception propagates. A wait is bounded by the client's timeout.
    /// ``@cradle.memoize`` is built on this.
    #[pyo3(signature = (key, compute, claim = 600.0))]
    fn get_or_compute(
        &self,
        py: Python<'_>,
        key: &str,
        compute: Py<PyAny>,
        claim: f64,
    ) -> PyResult<Buffer> {
        let c = self.client()?;
        let claim = Duration::try_from_secs_f64(claim)
            .map_err(|_| PyValueError::new_err("claim must be a positive number of seconds"))?;
        provide::get_or_compute(py, c, key, compute, claim)
    }

    /// Calls the bytes method ``name`` (version ``version``), offered by a
    /// provider process (Rust or Python): ``body`` (bytes-like) goes as is,
    /// ``blobs`` pass with it without a copy (``Buffer`` and ``SealedBlob``
    /// values by handle; bytes-like values are copied into new blobs first).
    /// Returns ``(response_body, [Buffer, ...])``: the response bytes and
    /// the result blobs, read-only over the shared pages. ``timeout`` in
    /// seconds (default: the client's). Errors: ``UnknownMethod`` (no
    /// provider), ``ProviderGone``, ``DeadlineExceeded``, ``Busy``,
    /// ``HandlerError`` (the handler raised), ...
    #[pyo3(signature = (name, body = None, version = 1, blobs = Vec::new(), timeout = None))]
    fn call_bytes<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        body: Option<&Bound<'py, PyAny>>,
        version: u32,
        blobs: Vec<Bound<'py, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<(Bound<'py, pyo3::types::PyBytes>, Vec<Buffer>)> {
        let c = self.client()?;
        let timeout = match timeout {
            None => self.timeout,
            Some(t) => Duration::try_from_secs_f64(t).map_err(|_| {
                PyValueError::new_err("timeout must be a positive number of seconds")
            })?,
        };
        let empty = pyo3::types::PyBytes::new(py, b"");
        let body = body.cloned().unwrap_or_else(|| empty.into_any());
        provide::call_bytes(py, c, name, version, &body, &blobs, timeout)
    }

    /// Serves bytes methods until ``stop()`` (from another thread or a
    /// handler), a signal's exception (Ctrl-C), or the end of the session:
    /// ``methods`` is a list of ``(name, version, handler, memoized)``; each handler is
    /// called as ``handler(body: bytes, blobs: list[Buffer])`` with the GIL
    /// and returns the response body (bytes-like or None) or a tuple
    /// ``(body, [blob, ...])`` whose blobs (``Writer``, ``SealedBlob``,
    /// ``Buffer`` or bytes-like) go back to the caller without a copy. An
    /// exception in a handler answers that call with ``HandlerError``
    /// (its message is ``"Type: message"``). ``concurrency`` calls are
    /// served at once (threads; the handlers take turns on the GIL).
    /// Returns ``(served, errors)``. Waits with the GIL released. Use
    /// ``Client.serve_bytes`` + ``Client.run`` (or ``@client.provides``).
    #[pyo3(signature = (methods, concurrency = 1))]
    fn _serve(
        &self,
        py: Python<'_>,
        methods: Vec<(String, u32, Py<PyAny>, bool)>,
        concurrency: u32,
    ) -> PyResult<(u64, u64)> {
        let c = self.client()?;
        provide::serve(py, c, &self.serving, methods, concurrency)
    }

    /// Stops ``run()`` (from another thread, a signal handler or a
    /// handler): the calls being served finish, the methods are withdrawn,
    /// then ``run`` returns. Whether a provider was running.
    fn stop(&self) -> bool {
        match &*lock(&self.serving) {
            Some(s) => {
                s.stop();
                true
            }
            None => false,
        }
    }

    /// The cap on this client's spare blobs, in bytes (``spare_bytes``):
    /// large blobs created and faulted in ahead of time, off the caller's
    /// thread, one per large length put or created twice within 10 s, so
    /// that the next ``put``/``create`` of that length copies into pages
    /// already faulted in. Each is given back after 10 s unused and at
    /// ``close()``. 0: none.
    #[getter]
    fn spare_bytes(&self) -> usize {
        self.spares.cap()
    }

    /// ``(ready, preparing)``: the lengths of the spare blobs ready now,
    /// and the length being prepared (or None). For tests and benchmarks.
    fn _spares(&self) -> (Vec<usize>, Option<usize>) {
        self.spares.status()
    }

    /// Waits (GIL released) until a spare blob of ``nbytes`` bytes is
    /// ready, for at most ``timeout`` seconds; whether one is. Returns at
    /// once (False) when none of that length is being prepared. For tests
    /// and benchmarks.
    #[pyo3(signature = (nbytes, timeout = 10.0))]
    fn _wait_spare(&self, py: Python<'_>, nbytes: usize, timeout: f64) -> PyResult<bool> {
        let t = Duration::try_from_secs_f64(timeout)
            .map_err(|_| PyValueError::new_err("timeout must be a positive number of seconds"))?;
        let spares = &self.spares;
        Ok(py.detach(move || spares.wait_ready(nbytes, t)))
    }

    /// Sends the lease releases this client has queued and waits until the
    /// server has them. (Buffers give their lease back when collected
    /// already; this is for completeness and for tests.)
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.client()?;
        py.detach(move || c.flush()).map_err(call_err)
    }

    /// Closes this client's handle on the session. Buffers and writers made
    /// from it keep the session open until they are collected; then the
    /// server releases everything the session held. Closing twice is allowed.
    fn close(&self, py: Python<'_>) {
        let c = lock(&self.inner).take();
        py.detach(|| self.spares.close());
        // Dropping the last reference joins the watcher thread: not under the GIL.
        py.detach(move || drop(c));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _ty: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        match &*lock(&self.inner) {
            Some(c) => format!(
                "<cradle.Client session {} at {}>",
                c.session_id(),
                self.socket.display()
            ),
            None => format!("<cradle.Client closed, {}>", self.socket.display()),
        }
    }
}
