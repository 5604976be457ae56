//! The blob values Python sees: [`Buffer`] (a read-only view of a sealed
//! blob, exporting the buffer protocol over the shared pages), [`Writer`]
//! (a blob being written, exporting a writable buffer over its window) and
//! [`SealedBlob`] (a sealed blob its author holds).
//!
//! Lifetimes: a `Buffer` owns its `BlobRef` (the lease and the mapping);
//! every buffer it exports (a `memoryview`, a numpy array made with
//! `np.frombuffer`/`np.asarray`) holds a reference to the `Buffer`, so the
//! lease lives until the last view is collected. A `Writer` counts the views
//! it exported and refuses to seal while one is alive: sealing unmaps a large
//! blob's window, which a live view would still point into.

use crate::errors::{blob_err, call_err};
use crate::spares::Spares;
use cradle_client::{BlobError, BlobHandle, BlobRef, BlobWriter, Client};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::c_int;
use std::sync::{Arc, Mutex};

// `lock` lives in `spares.rs`, which this file uses (one way).
pub(crate) use crate::spares::lock;

/// Fills `view` for `len` bytes at `ptr`, owned by `owner`.
///
/// # Safety
///
/// `view` is the pointer CPython passed to `bf_getbuffer`; `ptr..ptr+len`
/// stays valid (and, if `readonly`, unchanged) while `owner` lives and the
/// export is not released.
unsafe fn fill(
    owner: &Bound<'_, PyAny>,
    view: *mut ffi::Py_buffer,
    ptr: *mut u8,
    len: usize,
    readonly: bool,
    flags: c_int,
) -> PyResult<()> {
    let len = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyBufferError::new_err("blob too large for a Python buffer"))?;
    // SAFETY: per this function's contract; PyBuffer_FillInfo checks the
    // flags (a writable request on a read-only buffer raises BufferError),
    // takes a new reference to `owner` into `view.obj`, and describes the
    // bytes as unsigned bytes ("B"), one dimension.
    let rc = unsafe {
        ffi::PyBuffer_FillInfo(
            view,
            owner.as_ptr(),
            ptr.cast(),
            len,
            c_int::from(readonly),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(owner.py()))
    }
}

/// Copies `len` bytes at `ptr` (a Python buffer the caller keeps) into a new
/// sealed blob.
pub(crate) fn blob_from(
    c: &Client,
    ptr: usize,
    len: usize,
) -> Result<cradle_client::Blob, BlobError> {
    blob_into(c.create(len)?, ptr, len)
}

/// Copies `len` bytes at `ptr` (a Python buffer the caller keeps) into `w`
/// (a new blob of exactly `len` bytes) and seals it.
pub(crate) fn blob_into(
    mut w: BlobWriter,
    ptr: usize,
    len: usize,
) -> Result<cradle_client::Blob, BlobError> {
    debug_assert_eq!(w.len(), len);
    // SAFETY: `ptr..ptr+len` is the C-contiguous memory of a buffer the
    // caller holds (exported, so neither freed nor resized) until this
    // returns. A Python thread writing it meanwhile gets torn bytes, as with
    // any copy made without the GIL.
    let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    w.write_at(0, src);
    w.seal()
}

/// The memory of `obj` (buffer protocol, C-contiguous) as an address and
/// length; the returned buffer keeps it valid.
pub(crate) fn bytes_of(obj: &Bound<'_, PyAny>) -> PyResult<(PyUntypedBuffer, usize, usize)> {
    let buf = PyUntypedBuffer::get(obj)?;
    if !buf.is_c_contiguous() {
        return Err(PyBufferError::new_err(
            "put needs a C-contiguous buffer: pass np.ascontiguousarray(a), or use put_array",
        ));
    }
    let (ptr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
    Ok((buf, ptr, len))
}

/// A read-only view of a sealed blob in shared memory.
///
/// It exports the buffer protocol (read-only): ``memoryview(buf)``,
/// ``np.frombuffer(buf, dtype)`` and ``np.asarray(buf)`` share its pages, no
/// copy. The blob's lease lives as long as this object or any view made from
/// it; ``release()`` (or leaving a ``with`` block) ends it early when no view
/// is left. Returned by ``Client.get`` and ``SealedBlob.read``.
#[pyclass(name = "Buffer", module = "cradle", frozen)]
pub(crate) struct Buffer {
    state: Mutex<BufferState>,
}

struct BufferState {
    blob: Option<BlobRef>,
    exports: usize,
}

impl Buffer {
    pub(crate) fn new(blob: BlobRef) -> Self {
        Self {
            state: Mutex::new(BufferState {
                blob: Some(blob),
                exports: 0,
            }),
        }
    }
}

impl Buffer {
    /// The blob's handle (to pass it with a call), unless released.
    pub(crate) fn blob_handle(&self) -> PyResult<BlobHandle> {
        match &lock(&self.state).blob {
            Some(b) => Ok(*b.handle()),
            None => Err(PyValueError::new_err("the buffer was released")),
        }
    }
}

impl Buffer {
    /// A copy of the bytes after `tag` if the blob starts with `tag` and
    /// holds at most `max` bytes after it; `None` otherwise (or released).
    pub(crate) fn small_copy<'py>(
        &self,
        tag: &[u8],
        max: usize,
        py: Python<'py>,
    ) -> PyResult<Option<Bound<'py, pyo3::types::PyBytes>>> {
        let st = lock(&self.state);
        let Some(b) = &st.blob else {
            return Ok(None);
        };
        let bytes: &[u8] = b;
        match bytes.strip_prefix(tag) {
            Some(rest) if rest.len() <= max => Ok(Some(pyo3::types::PyBytes::new(py, rest))),
            _ => Ok(None),
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(b) = lock(&self.state).blob.take() {
            // The last reference is gone: the server learns it now, not with
            // the next full batch of releases.
            b.release_now();
        }
    }
}

#[pymethods]
impl Buffer {
    // SAFETY (of the export): the bytes are a sealed blob, immutable while
    // the lease lives; the lease and the mapping live in `state.blob`, which
    // `release` refuses to drop while `exports > 0`, and the view holds a
    // reference to this object.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let mut st = lock(&this.state);
        let (ptr, len) = match &st.blob {
            Some(b) => (b.as_ptr().cast_mut(), b.len()),
            None => {
                return Err(PyValueError::new_err(
                    "operation forbidden on a released buffer",
                ));
            }
        };
        // SAFETY: see above; the export is read-only.
        unsafe { fill(slf.as_any(), view, ptr, len, true, flags)? };
        st.exports += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut st = lock(&self.state);
        st.exports = st.exports.saturating_sub(1);
    }

    /// The blob's length in bytes.
    fn __len__(&self) -> PyResult<usize> {
        self.nbytes()
    }

    /// The blob's length in bytes.
    #[getter]
    fn nbytes(&self) -> PyResult<usize> {
        match &lock(&self.state).blob {
            Some(b) => Ok(b.len()),
            None => Err(PyValueError::new_err(
                "operation forbidden on a released buffer",
            )),
        }
    }

    /// Always True: a sealed blob cannot be written.
    #[getter]
    fn readonly(&self) -> bool {
        true
    }

    /// The blob's handle, as text (for logs).
    #[getter]
    fn handle(&self) -> PyResult<String> {
        match &lock(&self.state).blob {
            Some(b) => Ok(b.handle().to_string()),
            None => Err(PyValueError::new_err(
                "operation forbidden on a released buffer",
            )),
        }
    }

    /// Whether ``release()`` was called.
    #[getter]
    fn released(&self) -> bool {
        lock(&self.state).blob.is_none()
    }

    /// Gives the lease back now. Raises ``BufferError`` while a view made
    /// from this buffer (a memoryview, a numpy array) is alive. Releasing
    /// twice is allowed.
    fn release(&self) -> PyResult<()> {
        let blob = {
            let mut st = lock(&self.state);
            if st.exports > 0 {
                return Err(PyBufferError::new_err(format!(
                    "cannot release: {} view(s) of this buffer (memoryview, numpy array) are still alive",
                    st.exports
                )));
            }
            st.blob.take()
        };
        if let Some(b) = blob {
            b.release_now();
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _ty: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.release()
    }

    fn __repr__(&self) -> String {
        match &lock(&self.state).blob {
            Some(b) => format!("<cradle.Buffer {} bytes, {}>", b.len(), b.handle()),
            None => "<cradle.Buffer released>".to_owned(),
        }
    }
}

/// A blob being written: a writable buffer over its shared memory.
///
/// Fill it in place through the buffer protocol (``memoryview(w)[...] =``,
/// ``np.frombuffer(w, dtype)[:] = ...``), then ``seal()`` it (immutable from
/// then on) or ``put(key)`` it into the cache. Sealing is refused while a
/// view of the writer is alive (``del`` the array first): sealing unmaps the
/// window. A writer dropped (or a ``with`` block left) unsealed abandons the
/// blob. Returned by ``Client.create``.
#[pyclass(name = "Writer", module = "cradle", frozen)]
pub(crate) struct Writer {
    client: Arc<Client>,
    /// The client's spares, told to prepare another blob of this length
    /// once this one is sealed.
    spares: Spares,
    state: Mutex<WriterState>,
    /// The window's first byte (an address: raw pointers are not `Send`).
    ptr: usize,
    len: usize,
}

struct WriterState {
    writer: Option<BlobWriter>,
    exports: usize,
}

impl Writer {
    pub(crate) fn new(client: Arc<Client>, spares: Spares, mut writer: BlobWriter) -> Self {
        let ptr = writer.as_mut_ptr() as usize;
        let len = writer.len();
        Self {
            client,
            spares,
            state: Mutex::new(WriterState {
                writer: Some(writer),
                exports: 0,
            }),
            ptr,
            len,
        }
    }

    /// Takes the writer out to seal it: refused while views are alive.
    fn take(&self) -> PyResult<BlobWriter> {
        let mut st = lock(&self.state);
        if st.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot seal: {} view(s) of the writer (memoryview, numpy array) are still alive; delete them first",
                st.exports
            )));
        }
        st.writer
            .take()
            .ok_or_else(|| PyValueError::new_err("the writer is already sealed or aborted"))
    }

    /// Seals the blob (refused while views are alive).
    pub(crate) fn seal_blob(&self, py: Python<'_>) -> PyResult<cradle_client::Blob> {
        let blob = self.seal_only(py)?;
        self.refill();
        Ok(blob)
    }

    /// Seals the blob without preparing the next spare (`refill`).
    fn seal_only(&self, py: Python<'_>) -> PyResult<cradle_client::Blob> {
        let w = self.take()?;
        py.detach(move || w.seal()).map_err(blob_err)
    }

    /// The next blob of this length finds its pages ready. Called once the
    /// caller's own work is done: preparing a spare allocates and zeroes
    /// its pages on a helper thread, which would compete with the cache put
    /// for the CPU.
    fn refill(&self) {
        self.spares.refill(&self.client, self.len);
    }
}

#[pymethods]
impl Writer {
    // SAFETY (of the export): the window stays mapped read-write while
    // `state.writer` holds the writer, which `take` refuses to give up while
    // `exports > 0`; the view holds a reference to this object.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let mut st = lock(&this.state);
        if st.writer.is_none() {
            return Err(PyValueError::new_err(
                "the writer is sealed or aborted: its memory is gone",
            ));
        }
        // SAFETY: see above; only this process maps the window writable.
        unsafe {
            fill(
                slf.as_any(),
                view,
                this.ptr as *mut u8,
                this.len,
                false,
                flags,
            )?
        };
        st.exports += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut st = lock(&self.state);
        st.exports = st.exports.saturating_sub(1);
    }

    /// The blob's length in bytes.
    fn __len__(&self) -> usize {
        self.len
    }

    /// Copies ``data`` (any C-contiguous buffer: bytes, memoryview, a numpy
    /// array) into the blob at byte ``offset``, with the GIL released; a
    /// copy of 4 MiB or more is shared with a helper thread, like the copy
    /// ``Client.put`` makes. ``ValueError`` if it does not fit, or if
    /// ``data`` is a view of this writer.
    fn write(&self, py: Python<'_>, offset: usize, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let (buf, ptr, len) = bytes_of(data)?;
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(PyValueError::new_err(format!(
                "{len} bytes at offset {offset} do not fit a blob of {} bytes",
                self.len
            )));
        }
        if len > 0 && ptr < self.ptr + self.len && self.ptr < ptr + len {
            return Err(PyValueError::new_err(
                "the data is a view of this writer: copy it elsewhere first",
            ));
        }
        let mut st = lock(&self.state);
        let w = st
            .writer
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("the writer is already sealed or aborted"))?;
        py.detach(|| {
            // SAFETY: `ptr..ptr+len` is the C-contiguous memory of `buf`,
            // exported (neither freed nor resized) until `buf` is dropped
            // after this; it is not this writer's window (checked above).
            let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
            w.write_at(offset, src);
        });
        // The lock goes before the GIL is asked for again (`detach` has
        // returned): a thread that holds the GIL and waits for the lock in
        // `__getbuffer__` gets it.
        drop(st);
        drop(buf);
        Ok(())
    }

    /// The blob's length in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    /// Whether the blob has its own memfd (large) rather than a place in the
    /// session's pool (small: copied once at seal).
    #[getter]
    fn is_large(&self) -> PyResult<bool> {
        match &lock(&self.state).writer {
            Some(w) => Ok(w.is_large()),
            None => Err(PyValueError::new_err(
                "the writer is already sealed or aborted",
            )),
        }
    }

    /// Seals the blob: no process can change its bytes any more. Returns the
    /// ``SealedBlob`` (the author's lease).
    fn seal(&self, py: Python<'_>) -> PyResult<SealedBlob> {
        let blob = self.seal_blob(py)?;
        Ok(SealedBlob::new(Arc::clone(&self.client), blob))
    }

    /// Seals the blob and stores it in the cache under ``key`` (replacing
    /// what was there). The author's lease ends here: the cache holds it.
    fn put(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        let blob = self.seal_only(py)?;
        let c = Arc::clone(&self.client);
        let r = py.detach(move || {
            let r = c.cache().put(key, &blob);
            blob.release_now();
            r
        });
        self.refill();
        r.map_err(call_err)
    }

    /// Seals the blob and stores it under ``key`` unless the key exists;
    /// whether it stored.
    fn put_if_absent(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let blob = self.seal_only(py)?;
        let c = Arc::clone(&self.client);
        let r = py.detach(move || {
            let r = c.cache().put_if_absent(key, &blob);
            blob.release_now();
            r
        });
        self.refill();
        r.map_err(call_err)
    }

    /// Abandons the blob unsealed (the server frees it). Refused while
    /// views are alive; a no-op once sealed or aborted.
    fn abort(&self) -> PyResult<()> {
        let mut st = lock(&self.state);
        if st.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot abort: {} view(s) of the writer are still alive",
                st.exports
            )));
        }
        st.writer = None;
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Leaving a ``with`` block abandons the blob if it was not sealed.
    fn __exit__(
        &self,
        _ty: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.abort()
    }

    fn __repr__(&self) -> String {
        let st = lock(&self.state);
        let what = if st.writer.is_some() {
            "open"
        } else {
            "closed"
        };
        format!("<cradle.Writer {} bytes, {what}>", self.len)
    }
}

/// A sealed blob its author holds (returned by ``Writer.seal``): the
/// author's lease and the handle. ``put(key)`` stores it in the cache,
/// ``read()`` maps it read-only. ``release()`` gives the author's lease back
/// (the cache and readers keep theirs); so does collecting it.
#[pyclass(name = "SealedBlob", module = "cradle", frozen)]
pub(crate) struct SealedBlob {
    client: Arc<Client>,
    blob: Mutex<Option<Arc<cradle_client::Blob>>>,
}

impl SealedBlob {
    fn new(client: Arc<Client>, blob: cradle_client::Blob) -> Self {
        Self {
            client,
            blob: Mutex::new(Some(Arc::new(blob))),
        }
    }

    /// Takes the blob out (to hand it on by value): this object is
    /// released afterwards. Refused while another thread uses it.
    pub(crate) fn take_blob(&self) -> PyResult<cradle_client::Blob> {
        let b = lock(&self.blob)
            .take()
            .ok_or_else(|| PyValueError::new_err("the blob was released"))?;
        Arc::try_unwrap(b).map_err(|b| {
            *lock(&self.blob) = Some(b);
            PyValueError::new_err("the blob is in use by another thread")
        })
    }

    /// The blob's handle, unless released.
    pub(crate) fn blob_handle(&self) -> PyResult<BlobHandle> {
        Ok(*self.blob()?.handle())
    }

    fn blob(&self) -> PyResult<Arc<cradle_client::Blob>> {
        lock(&self.blob)
            .clone()
            .ok_or_else(|| PyValueError::new_err("the blob was released"))
    }
}

/// Drops the last reference to an author's blob, giving its lease back now
/// (another thread still using it drops it later, with the next batch).
pub(crate) fn release_blob(b: Option<Arc<cradle_client::Blob>>) {
    if let Some(b) = b.and_then(|b| Arc::try_unwrap(b).ok()) {
        b.release_now();
    }
}

impl Drop for SealedBlob {
    fn drop(&mut self) {
        release_blob(lock(&self.blob).take());
    }
}

#[pymethods]
impl SealedBlob {
    /// Stores the blob in the cache under ``key`` (replacing what was there).
    fn put(&self, py: Python<'_>, key: &str) -> PyResult<()> {
        let (c, b) = (Arc::clone(&self.client), self.blob()?);
        py.detach(move || c.cache().put(key, &b)).map_err(call_err)
    }

    /// Stores the blob under ``key`` unless the key exists; whether it stored.
    fn put_if_absent(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let (c, b) = (Arc::clone(&self.client), self.blob()?);
        py.detach(move || c.cache().put_if_absent(key, &b))
            .map_err(call_err)
    }

    /// A read-only ``Buffer`` over the blob (a new lease, the same pages).
    fn read(&self, py: Python<'_>) -> PyResult<Buffer> {
        let (c, b) = (Arc::clone(&self.client), self.blob()?);
        let r = py.detach(move || c.get(b.handle())).map_err(blob_err)?;
        Ok(Buffer::new(r))
    }

    /// The blob's length in bytes.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.blob()?.len())
    }

    /// The blob's length in bytes.
    #[getter]
    fn nbytes(&self) -> PyResult<usize> {
        Ok(self.blob()?.len())
    }

    /// The blob's handle, as text (for logs).
    #[getter]
    fn handle(&self) -> PyResult<String> {
        Ok(self.blob()?.handle().to_string())
    }

    /// Gives the author's lease back (a no-op the second time).
    fn release(&self) {
        let b = lock(&self.blob).take();
        release_blob(b);
    }

    fn __repr__(&self) -> String {
        match &*lock(&self.blob) {
            Some(b) => format!("<cradle.SealedBlob {} bytes, {}>", b.len(), b.handle()),
            None => "<cradle.SealedBlob released>".to_owned(),
        }
    }
}
