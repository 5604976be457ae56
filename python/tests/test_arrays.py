"""put_array / get_array: dtype and shape kept in the standard .npy format,
read back as a read-only ndarray over the shared pages, and the same bytes
through the ``cradle`` command line."""

from __future__ import annotations

import numpy as np
import pytest

CASES = {
    "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    "f64-big": np.linspace(0, 1, 1 << 18),  # 2 MiB: a large blob
    "i16": np.array([-3, 0, 7], dtype=np.int16),
    "u8-scalar": np.array(42, dtype=np.uint8),
    "bool": np.array([[True, False], [False, True]]),
    "c64": np.array([1 + 2j, -3j], dtype=np.complex64),
    "big-endian": np.arange(5, dtype=">i4"),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "record": np.array([(1, 2.5), (3, 4.5)], dtype=[("id", "<i4"), ("v", "<f8")]),
    "strings": np.array(["ab", "cde"], dtype="<U3"),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "datetime": np.array(["2026-12-02", "2027-01-01"], dtype="datetime64[D]"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip(server, name):
    a = CASES[name]
    with server.client() as c:
        c.put_array(name, a)
        b = c.get_array(name)
        assert b.dtype == a.dtype and b.shape == a.shape
        assert np.array_equal(b, a)
        assert not b.flags.writeable
        assert b.flags.f_contiguous == a.flags.f_contiguous or a.ndim < 2


def test_non_contiguous_arrays_are_stored_contiguous(server):
    a = np.arange(100, dtype=np.int32).reshape(10, 10)[::2, 1::3]
    with server.client() as c:
        c.put_array("strided", a)
        b = c.get_array("strided")
        assert np.array_equal(a, b) and b.flags.c_contiguous


def test_get_array_is_a_read_only_view_of_the_shared_pages(server):
    with server.client() as c:
        c.put_array("a", np.ones((256, 1024), dtype=np.float32))
        b = c.get_array("a")
        with pytest.raises(ValueError, match="assignment destination is read-only"):
            b[0, 0] = 2
        # The array's memory lies in the Buffer that holds the lease: no copy.
        base = b
        while not hasattr(base, "release") and getattr(base, "base", None) is not None:
            base = base.base
        buf = base.obj if isinstance(base, memoryview) else base
        assert type(buf).__name__ == "Buffer"
        start = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
        data = b.__array_interface__["data"][0]
        assert start < data < start + len(buf)


def test_miss_and_refusals(server):
    with server.client() as c:
        assert c.get_array("nothing") is None
        with pytest.raises(ValueError, match="Python objects"):
            c.put_array("o", np.array([object()]))
        c.put("raw", b"not an npy file")
        with pytest.raises(ValueError, match=".npy"):
            c.get_array("raw")
        assert c.keys() == ["raw"]  # a refused put_array stores nothing


def test_cli_get_gives_a_file_numpy_loads(server, tmp_path):
    with server.client() as c:
        for name in ["f32", "fortran", "record", "big-endian"]:
            c.put_array(name, CASES[name])
            out = tmp_path / f"{name}.npy"
            server.cli("get", name, "-o", str(out))
            back = np.load(out)
            assert back.dtype == CASES[name].dtype
            assert np.array_equal(back, CASES[name]), name


def test_a_file_saved_by_numpy_is_read_by_get_array(server, tmp_path):
    a = np.arange(60000, dtype=np.uint16).reshape(300, 200)
    f = tmp_path / "saved.npy"
    np.save(f, a)
    server.cli("put", "saved", str(f))
    with server.client() as c:
        assert np.array_equal(c.get_array("saved"), a)


def test_an_array_survives_a_restart_through_the_disk_tier(server):
    a = np.arange(300_000, dtype=np.float32).reshape(300, 1000)
    with server.client() as c:
        c.put_array("kept", a)
    server.stop()  # a clean stop writes every queued put to disk
    server.start()
    with server.client() as c:
        b = c.get_array("kept")  # loaded from disk, checksum verified
        assert np.array_equal(a, b) and not b.flags.writeable
        assert c.stats()["blobs"]["disk_hits"] == 1
