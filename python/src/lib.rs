//! The `cradle` Python package's extension module, `cradle._cradle`: the
//! CRADLE client for Python, built on the sync [`cradle_client::Client`]
//! (no second implementation of the protocol). The pure-Python part
//! (`python/cradle/__init__.py`) re-exports it and adds `put_array` /
//! `get_array` (numpy, `.npy` format).
//!
//! Files, bottom to top: `errors` (the exceptions) -> `buffers` (Buffer,
//! Writer, SealedBlob) -> `spares` (large blobs prepared ahead for `put`)
//! -> `memo` (the memoize key of plain values, small results) -> `provide`
//! (digests, get-or-compute, bytes calls and providers) -> `client`
//! (Client). See docs/architecture.md,
//! "The Python package".

mod buffers;
mod client;
mod errors;
mod memo;
mod provide;
mod spares;

use pyo3::prelude::*;

/// The default socket path: ``$CRADLE_SOCKET``, else the server's default
/// (``$XDG_RUNTIME_DIR/cradle/cradle.sock``, else ``/tmp/cradle-$UID/cradle.sock``).
#[pyfunction]
fn default_socket_path() -> std::path::PathBuf {
    cradle_client::default_socket_path()
}

#[pymodule]
fn _cradle(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<buffers::Buffer>()?;
    m.add_class::<buffers::Writer>()?;
    m.add_class::<buffers::SealedBlob>()?;
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(default_socket_path, m)?)?;
    m.add_function(wrap_pyfunction!(provide::digest, m)?)?;
    m.add_function(wrap_pyfunction!(memo::_memo_key, m)?)?;
    m.add_function(wrap_pyfunction!(memo::_memo_result, m)?)?;
    m.add("SMALL_BLOB_MAX", cradle_client::SMALL_BLOB_MAX)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
