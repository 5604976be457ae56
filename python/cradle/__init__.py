"""CRADLE for Python: bytes and numpy arrays through the per-user
``cradle-server``'s shared-memory cache, without copies between processes.

>>> import cradle, numpy as np
>>> with cradle.Client() as c:                      # $CRADLE_SOCKET, else the default
...     c.put_array("frames/1", np.arange(6, dtype=np.float32).reshape(2, 3))
...     a = c.get_array("frames/1")                 # read-only, over the shared pages
...     a.shape, a.dtype.name
((2, 3), 'float32')

What is here: ``Client`` (``ping``, ``stats``, ``put``/``get``/``create``/
``remove``/``keys``/``put_if_absent``, ``put_array``/``get_array``), the
values ``Buffer``, ``Writer`` and ``SealedBlob``, and the exceptions (base
``CradleError``). Not yet: ``@cradle.memoize`` (single flight across
processes needs the server's get-or-compute, which the Rust client does not
offer yet) and Python providers (serving methods to other processes needs
the provider API); see python/README.md.
"""

from __future__ import annotations

from . import _cradle
from ._cradle import (
    SMALL_BLOB_MAX,
    BadHandle,
    Buffer,
    Busy,
    CacheFull,
    ConnectError,
    CradleError,
    DeadlineExceeded,
    EncodeError,
    Forked,
    HandlerError,
    HandlerPanicked,
    Malformed,
    MapError,
    MessageTooLarge,
    NoServer,
    PeerDead,
    ProtocolError,
    ProviderGone,
    QuotaExceeded,
    Refused,
    RemoteError,
    ResponseTooLarge,
    RingFull,
    SchemaMismatch,
    SealedBlob,
    Shutdown,
    Timeout,
    UnknownMethod,
    Writer,
    default_socket_path,
)
from ._cradle import Client as _RustClient

__version__: str = _cradle.__version__

__all__ = [
    "Client",
    "Buffer",
    "Writer",
    "SealedBlob",
    "default_socket_path",
    "SMALL_BLOB_MAX",
    "CradleError",
    "ConnectError",
    "NoServer",
    "PeerDead",
    "Timeout",
    "RingFull",
    "MessageTooLarge",
    "Forked",
    "EncodeError",
    "ProtocolError",
    "MapError",
    "RemoteError",
    "QuotaExceeded",
    "Shutdown",
    "BadHandle",
    "CacheFull",
    "UnknownMethod",
    "Malformed",
    "HandlerPanicked",
    "HandlerError",
    "ResponseTooLarge",
    "ProviderGone",
    "DeadlineExceeded",
    "Busy",
    "SchemaMismatch",
    "Refused",
]


def _npy_header(dtype, shape, fortran_order):
    """The ``.npy`` header (magic, version, dict, padding) numpy's own
    ``numpy.lib.format`` writes for an array of this dtype and shape."""
    import io

    import numpy as np

    fmt = np.lib.format
    d = {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": shape}
    out = io.BytesIO()
    # Version 1.0 where the header fits, else 2.0 (as np.save does).
    try:
        fmt.write_array_header_1_0(out, d)
    except ValueError:
        out = io.BytesIO()
        fmt.write_array_header_2_0(out, d)
    return out.getvalue()


def _npy_parse(buf):
    """(dtype, shape, fortran_order, data offset) of the ``.npy`` bytes in
    ``buf`` (anything with the buffer protocol)."""
    import io

    import numpy as np

    fmt = np.lib.format
    mv = memoryview(buf)
    # The header is at most a few KiB: parse a copy of the first bytes
    # (version 1.0: 2-byte length at 8; 2.0/3.0: 4-byte length at 8).
    head = bytes(mv[:12])
    if len(head) < 10 or head[:6] != fmt.MAGIC_PREFIX:
        raise ValueError("the blob is not in .npy format (was it stored with put_array?)")
    major = head[6]
    if major == 1:
        hlen = 10 + int.from_bytes(head[8:10], "little")
    else:
        hlen = 12 + int.from_bytes(head[8:12], "little")
    if hlen > len(mv):
        raise ValueError("the blob's .npy header is longer than the blob")
    f = io.BytesIO(bytes(mv[:hlen]))
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = fmt.read_array_header_1_0(f)
    else:
        shape, fortran_order, dtype = fmt.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError("the blob holds Python objects (pickled): get_array does not load those")
    return dtype, shape, fortran_order, hlen


class Client(_RustClient):
    """A connection to the CRADLE server: one session, its own rings in
    shared memory.

    ``Client(socket=None, timeout=None)``: ``socket`` is the server's socket
    path (default: ``$CRADLE_SOCKET``, else the server's default path, as
    for the ``cradle`` command); ``timeout`` is every call's deadline in
    seconds (default 30). Usable from several threads at once (the GIL is
    released while a call waits) and as a context manager (``close()`` on
    exit). After ``fork()`` the child must make its own client.
    """

    def put_array(self, key: str, array) -> None:
        """Stores a numpy array under ``key`` in the standard ``.npy``
        format (header with dtype and shape, then the data), so
        ``cradle get KEY -o x.npy`` gives a file ``np.load`` opens. The data
        is copied once, straight into shared memory (any layout; a
        C-contiguous copy is stored for a non-contiguous array, a
        Fortran-ordered one keeps its order). Arrays of Python objects are
        refused (``ValueError``)."""
        import numpy as np

        a = np.asanyarray(array)
        if a.dtype.hasobject:
            raise ValueError("put_array stores plain data: an array of Python objects cannot be shared")
        fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous)
        header = _npy_header(a.dtype, a.shape, fortran)
        w = self.create(len(header) + a.nbytes)
        try:
            dst = np.frombuffer(w, dtype=np.uint8)
            dst[: len(header)] = np.frombuffer(header, dtype=np.uint8)
            if a.nbytes:
                data = dst[len(header):].view(a.dtype)
                data = data.reshape(a.shape, order="F" if fortran else "C")
                np.copyto(data, a, casting="no")
            del dst
            data = None
        except BaseException:
            dst = data = None
            w.abort()
            raise
        w.put(key)

    def get_array(self, key: str):
        """The array stored under ``key`` by ``put_array`` (or any ``.npy``
        bytes), as a read-only ``numpy.ndarray`` over the shared pages: no
        copy. ``None`` on a miss. The blob's lease lives as long as the array
        (or any view of it). Writing to it raises ``ValueError: assignment
        destination is read-only``."""
        import numpy as np

        buf = self.get(key)
        if buf is None:
            return None
        dtype, shape, fortran_order, offset = _npy_parse(buf)
        count = 1
        for n in shape:
            count *= n
        if count == 0 or dtype.itemsize == 0:
            a = np.empty(shape, dtype=dtype)
            a.flags.writeable = False
            return a
        a = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
        return a.reshape(shape, order="F" if fortran_order else "C")
