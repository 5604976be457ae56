//! The fast path of a `@cradle.memoize` hit: the key of a call whose
//! arguments are plain values, encoded and hashed in one Rust call, and the
//! decoding of a small pickled result without building Python views.
//!
//! The encoding is byte for byte the one `_encode` in `cradle/__init__.py`
//! writes (docs/architecture.md §12): `_memo_key` handles `None`, `bool`,
//! `int`, `float`, `str`, `bytes` and tuples/lists of those, matched by
//! exact type, and answers `None` for anything else, which the Python
//! encoder then keys (or refuses with `TypeError`). The package's tests
//! compare both encoders on the same values.

use crate::buffers::Buffer;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

/// What every memoized key's argument encoding starts with.
const HEADER: &[u8] = b"cradle.memoize 1\n";

/// Nesting deeper than this goes to the Python encoder (which recurses
/// without a bound of its own; this one stays off the stack's edge).
const MAX_DEPTH: usize = 32;

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

/// Appends the encoding of `v`; `Ok(false)` if `v` (or something inside)
/// is not a type this fast path handles.
fn encode(v: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<bool> {
    if depth > MAX_DEPTH {
        return Ok(false);
    }
    if v.is_none() {
        out.push(b'N');
    } else if v.is_exact_instance_of::<PyBool>() {
        out.push(if v.is_truthy()? { b'T' } else { b'F' });
    } else if v.is_exact_instance_of::<PyInt>() {
        // Python writes `str(v)`: the decimal digits, a '-' if negative.
        let s = match v.extract::<i64>() {
            Ok(i) => i.to_string(),
            Err(_) => v.str()?.to_str()?.to_owned(),
        };
        out.push(b'I');
        put_len(out, s.len());
        out.extend_from_slice(s.as_bytes());
    } else if v.is_exact_instance_of::<PyFloat>() {
        let f: f64 = v.extract()?;
        out.push(b'D');
        out.extend_from_slice(&f.to_le_bytes());
    } else if v.is_exact_instance_of::<PyString>() {
        // A str with lone surrogates has no UTF-8: the Python encoder
        // ("surrogatepass") keys it.
        let Ok(s) = v.cast::<PyString>()?.to_str() else {
            return Ok(false);
        };
        out.push(b'S');
        put_len(out, s.len());
        out.extend_from_slice(s.as_bytes());
    } else if v.is_exact_instance_of::<PyBytes>() {
        let b = v.cast::<PyBytes>()?.as_bytes();
        out.push(b'B');
        put_len(out, b.len());
        out.extend_from_slice(blake3::hash(b).as_bytes());
    } else if let Ok(t) = v.cast_exact::<PyTuple>() {
        out.push(b'(');
        put_len(out, t.len());
        for x in t.iter() {
            if !encode(&x, out, depth + 1)? {
                return Ok(false);
            }
        }
    } else if let Ok(l) = v.cast_exact::<PyList>() {
        out.push(b'[');
        put_len(out, l.len());
        // A snapshot: the list cannot change under the encoding.
        for x in l.to_tuple().iter() {
            if !encode(&x, out, depth + 1)? {
                return Ok(false);
            }
        }
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// The hex digits of `bytes`, appended to `s`.
fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
}

/// ``_memo_key(prefix, names, args)``: ``prefix`` + the BLAKE3 (hex) of the
/// encoding of the list of ``(name, value)`` pairs, as
/// ``cradle.memoize``'s Python encoder computes it, or ``None`` when a
/// value is not one of the plain types handled here.
#[pyfunction]
pub(crate) fn _memo_key(
    prefix: &str,
    names: &Bound<'_, PyTuple>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<Option<String>> {
    if names.len() != args.len() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(HEADER);
    out.push(b'[');
    put_len(&mut out, args.len());
    for (name, value) in names.iter().zip(args.iter()) {
        out.push(b'(');
        put_len(&mut out, 2);
        if !encode(&name, &mut out, 1)? || !encode(&value, &mut out, 1)? {
            return Ok(None);
        }
    }
    let mut key = String::with_capacity(prefix.len() + 64);
    key.push_str(prefix);
    push_hex(&mut key, blake3::hash(&out).as_bytes());
    Ok(Some(key))
}

/// The tag of a pickled memoized result (`_TAG_PICKLE` in `__init__.py`).
const TAG_PICKLE: &[u8] = b"CRDLmP1\n";

/// Results at most this long are unpickled from a copy, the lease given
/// back at once; longer ones through a view of the shared pages.
const COPY_MAX: usize = 64 << 10;

/// ``_memo_result(buf)``: the value a small pickled result blob holds
/// (unpickled from a copy of its bytes, the buffer released), or
/// ``NotImplemented`` when the blob is anything else (the Python decoder
/// takes it).
#[pyfunction]
pub(crate) fn _memo_result<'py>(buf: &Bound<'py, Buffer>) -> PyResult<Bound<'py, PyAny>> {
    let py = buf.py();
    let Some(data) = buf.get().small_copy(TAG_PICKLE, COPY_MAX, py)? else {
        return Ok(py.NotImplemented().into_bound(py));
    };
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let loads = LOADS.get_or_try_init(py, || {
        py.import("pickle")?.getattr("loads").map(Bound::unbind)
    })?;
    loads.bind(py).call1((data,))
}
