"""Blobs and the cache without copies: put from any buffer, get as a
read-only buffer over the shared pages, create-and-fill in place, and the
lease that lives as long as any view."""

from __future__ import annotations

import array
import gc

import numpy as np
import pytest

import cradle
from conftest import eventually, leases_of


def mapping_of(address: int) -> str:
    """The /proc/self/maps line of the mapping that holds ``address``."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line
    raise LookupError(hex(address))


def address(buf) -> int:
    return np.frombuffer(buf, dtype=np.uint8).__array_interface__["data"][0]


def test_put_takes_any_buffer(server):
    with server.client() as c:
        values = {
            "bytes": b"hello",
            "bytearray": bytearray(b"world"),
            "memoryview": memoryview(b"0123456789")[2:8],
            "array": array.array("d", [1.5, 2.5]),
            "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "u16": np.arange(7, dtype=np.uint16),
            "c128": np.array([1 + 2j, 3 - 4j]),
            "empty": b"",
            "large": np.full(1 << 20, 3, dtype=np.int64),  # 8 MiB: its own memfd
        }
        for k, v in values.items():
            c.put(k, v)
        for k, v in values.items():
            got = c.get(k)
            assert bytes(got) == bytes(memoryview(v).cast("B")), k
            assert len(got) == memoryview(v).nbytes
        assert c.get("missing") is None


def test_put_refuses_a_non_contiguous_buffer(server):
    with server.client() as c, pytest.raises(BufferError, match="C-contiguous"):
        c.put("k", np.arange(10)[::2])


def test_get_is_read_only_and_shares_the_pages(server):
    with server.client() as c:
        c.put("big", np.arange(1 << 20, dtype=np.float64))
        buf = c.get("big")
        assert buf.readonly
        mv = memoryview(buf)
        assert mv.readonly and mv.nbytes == 8 << 20
        with pytest.raises(TypeError):
            mv[0] = 1
        a = np.asarray(buf)
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="assignment destination is read-only"):
            a[0] = 1
        # The array, the memoryview and a second get are the same memory: a
        # shared mapping of the server's memfd, not a copy.
        assert address(buf) == a.__array_interface__["data"][0]
        again = c.get("big")
        line = mapping_of(address(again))
        assert "/memfd:" in line, line
        assert mapping_of(address(buf)) == line
        assert line.split()[1].startswith("r") and "w" not in line.split()[1], line
        assert np.array_equal(np.frombuffer(buf, np.float64), np.arange(1 << 20, dtype=np.float64))


def test_a_writable_view_is_refused(server):
    with server.client() as c:
        c.put("k", b"abc")
        with pytest.raises(ValueError, match="WRITEABLE"):
            np.frombuffer(c.get("k"), np.uint8).setflags(write=True)
        import ctypes

        with pytest.raises(TypeError):
            ctypes.c_char.from_buffer(c.get("k"))  # needs a writable buffer


@pytest.mark.parametrize("nbytes", [100, 4 << 20])  # small (pool) and large (own memfd)
def test_create_fill_in_place_then_put(server, nbytes):
    with server.client() as c:
        w = c.create(nbytes)
        assert len(w) == nbytes and w.is_large == (nbytes > cradle.SMALL_BLOB_MAX)
        np.frombuffer(w, dtype=np.uint8)[:] = np.arange(nbytes) % 251
        view = np.frombuffer(w, dtype=np.uint8)
        with pytest.raises(BufferError, match="still alive"):
            w.put("k")  # a view of the window is alive: sealing would unmap it
        del view
        w.put("k")
        with pytest.raises(ValueError, match="sealed"):
            memoryview(w)
        with pytest.raises(ValueError, match="sealed"):
            w.put("again")
        assert np.array_equal(np.frombuffer(c.get("k"), np.uint8), np.arange(nbytes) % 251)


@pytest.mark.parametrize("nbytes", [100, 9 << 20])  # a plain copy; one shared with the helper thread
def test_writer_write_copies_buffers_at_offsets(server, nbytes):
    data = (np.arange(nbytes, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    with server.client() as c:
        w = c.create(nbytes + 7)
        w.write(0, b"head---")
        w.write(7, data)
        with pytest.raises(ValueError, match="do not fit"):
            w.write(8, data)
        with pytest.raises(ValueError, match="view of this writer"):
            w.write(0, memoryview(w)[:3])
        with pytest.raises(BufferError):
            w.write(0, data[::2])  # not contiguous
        w.put("written")
        with pytest.raises(ValueError, match="sealed"):
            w.write(0, b"x")
        got = np.frombuffer(c.get("written"), np.uint8)
        assert bytes(got[:7]) == b"head---" and np.array_equal(got[7:], data)


def test_seal_gives_a_sealed_blob(server):
    with server.client() as c:
        w = c.create(6)
        memoryview(w)[:] = b"sealed"
        blob = w.seal()
        assert len(blob) == 6 and "blob" in blob.handle
        assert bytes(blob.read()) == b"sealed"
        assert blob.put_if_absent("s") is True
        assert blob.put_if_absent("s") is False
        blob.put("t")
        blob.release()
        with pytest.raises(ValueError, match="released"):
            blob.put("u")
        assert bytes(c.get("s")) == bytes(c.get("t")) == b"sealed"


def test_an_aborted_writer_leaves_nothing(server):
    with server.client() as c:
        with c.create(1 << 20) as w:
            memoryview(w)[:3] = b"abc"
        # Left unsealed: abandoned, and the server frees it.
        eventually("the abandoned blob is freed", lambda: c.stats()["blobs"]["writing"] == 0)
        with pytest.raises(ValueError):
            w.put("k")
        assert c.keys() == []


def test_put_if_absent_remove_and_keys(server):
    with server.client() as c:
        assert c.put_if_absent("a/1", b"first") is True
        assert c.put_if_absent("a/1", b"second") is False
        assert bytes(c.get("a/1")) == b"first"
        c.put("a/2", b"x")
        c.put("b/1", b"y")
        assert c.keys() == ["a/1", "a/2", "b/1"]
        assert c.keys("a/") == ["a/1", "a/2"]
        assert c.remove("a/1") is True
        assert c.remove("a/1") is False
        assert c.keys("a/") == ["a/2"]


def test_a_reader_keeps_a_removed_blob(server):
    with server.client() as c:
        c.put("k", b"kept")
        buf = c.get("k")
        c.remove("k")
        c.put("k", b"replaced")
        assert bytes(buf) == b"kept"
        assert bytes(c.get("k")) == b"replaced"


def test_the_lease_lives_as_long_as_any_view(server):
    with server.client() as c, server.client() as observer:

        def leases():
            return leases_of(observer.stats(), c.session_id)

        c.put("k", np.arange(1000, dtype=np.float32))
        assert leases() == 0
        buf = c.get("k")
        # The get returned: the lease outlives the call.
        assert leases() == 1
        arr = np.frombuffer(buf, dtype=np.float32)
        mv = memoryview(buf)
        del buf  # the views keep the Buffer, hence the lease
        gc.collect()
        assert leases() == 1
        assert arr[999] == 999
        del mv
        gc.collect()
        assert leases() == 1
        del arr  # the last view: the lease ends
        gc.collect()
        eventually("the lease is released", lambda: leases() == 0)


def test_release_ends_the_lease_early(server):
    with server.client() as c:
        c.put("k", b"abc")
        with c.get("k") as buf:
            assert bytes(buf) == b"abc"
            m = memoryview(buf)
            with pytest.raises(BufferError, match="still alive"):
                buf.release()
            m.release()
        assert buf.released
        with pytest.raises(ValueError, match="released"):
            memoryview(buf)
        eventually("the lease is released", lambda: leases_of(c.stats(), c.session_id) == 0)


def test_buffers_outlive_their_client(server):
    c = server.client()
    c.put("k", b"still here")
    buf = c.get("k")
    sid = c.session_id
    c.close()
    assert bytes(buf) == b"still here"
    with server.client() as observer:
        assert leases_of(observer.stats(), sid) == 1  # the buffer keeps the session
        del buf
        gc.collect()
        eventually("the session ends with its last buffer",
                   lambda: leases_of(observer.stats(), sid) is None)
