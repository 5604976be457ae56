"""Spare blobs: large blobs a client prepares ahead (created, faulted in
for writing, off the caller's thread) so that the next ``put``/``create``
of the same length copies into ready pages. A blob written through a spare
is sealed like any other; the spares stay within their cap, are counted by
the server as bytes being written, and are given back at close."""

from __future__ import annotations

import numpy as np
import pytest

import cradle
from conftest import eventually

MIB = 1 << 20


def writing(c) -> int:
    """Blobs being written, all sessions (spares included)."""
    return c.stats()["blobs"]["writing"]


def writing_bytes(c) -> int:
    """Bytes this client's session is writing (spares included)."""
    for s in c.stats()["per_session"]:
        if s["id"] == c.session_id:
            return s["pool_bytes"]
    raise LookupError(c.session_id)


def test_a_repeated_length_gets_a_spare_that_the_next_put_takes(server):
    with server.client() as c:
        a = np.arange(MIB, dtype=np.float32)  # 4 MiB: a large blob
        c.put("k/1", a)
        # A one-off length gets no spare.
        assert c._spares() == ([], None) and not c._wait_spare(a.nbytes, 1)
        c.put("k/1", a)
        assert c._wait_spare(a.nbytes)
        ready, _ = c._spares()
        assert ready == [a.nbytes]
        # The server sees the spare as bytes being written by this session.
        assert writing(c) == 1 and writing_bytes(c) == a.nbytes
        b = a + 1
        c.put("k/2", b)  # written through the spare
        assert np.array_equal(np.frombuffer(c.get("k/1"), np.float32), a)
        assert np.array_equal(np.frombuffer(c.get("k/2"), np.float32), b)


def test_a_blob_put_through_a_spare_is_immutable(server):
    with server.client() as c:
        a = np.full(2 * MIB, 7, dtype=np.uint8)
        c.put("first", a)
        c.put("first", a)
        assert c._wait_spare(a.nbytes)
        src = np.full(2 * MIB, 9, dtype=np.uint8)
        c.put("k", src)
        assert c._spares()[0] == [] or c._spares()[0] == [a.nbytes]  # taken (maybe refilled)
        src[:] = 1  # the put copied: the stored bytes do not follow the source
        buf = c.get("k")
        assert buf.readonly
        view = np.frombuffer(buf, np.uint8)
        assert not view.flags.writeable and (view == 9).all()
        with pytest.raises(ValueError, match="read-only"):
            view[0] = 0
        with pytest.raises(ValueError):
            view.setflags(write=True)
        # The mapping is read-only; no writable mapping of the blob is left
        # in this process (sealing refuses while one exists).
        addr = view.__array_interface__["data"][0]
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= addr < hi:
                    assert "w" not in line.split()[1], line
                    break
            else:
                pytest.fail("the blob's mapping is not in /proc/self/maps")


def test_create_takes_a_spare_and_seal_refills(server):
    with server.client() as c:
        n = 3 * MIB + 5
        for _ in range(2):
            w = c.create(n)
            memoryview(w)[:] = b"x" * n
            w.put("a")
        assert c._wait_spare(n)
        w = c.create(n)
        assert w.is_large
        # A spare's bytes are the kernel's zeros, as a new large blob's.
        assert bytes(memoryview(w)[:4096]) == bytes(4096)
        memoryview(w)[:] = b"y" * n
        blob = w.seal()
        assert bytes(blob.read()) == b"y" * n
        blob.release()


def test_spares_stay_within_the_cap(server):
    cap = 6 * MIB
    with server.client(spare_bytes=cap) as c:
        assert c.spare_bytes == cap
        for mib in (2, 3, 4, 5, 2, 7):  # 7 MiB: more than the cap, never prepared
            for _ in range(2):
                c.put(f"k/{mib}", np.zeros(mib * MIB, np.uint8))
            c._wait_spare(mib * MIB, 30)
            ready, preparing = c._spares()
            assert sum(ready) + (preparing or 0) <= cap, (ready, preparing)
            assert len(set(ready)) == len(ready)  # one per length
        assert 7 * MIB not in c._spares()[0]


def test_no_spares_when_turned_off_or_for_small_blobs(server):
    with server.client(spare_bytes=0) as c:
        c.put("big", np.zeros(4 * MIB, np.uint8))
        c.put("big", np.zeros(4 * MIB, np.uint8))
        assert c._spares() == ([], None)
        assert not c._wait_spare(4 * MIB, 1)
    with server.client() as c:
        for _ in range(2):
            c.put("small", b"x" * 1000)
            c.put("pool-sized", b"x" * cradle.SMALL_BLOB_MAX)
        assert c._spares() == ([], None)


def test_close_gives_the_spares_back(server):
    c = server.client()
    c.put("k", np.zeros(4 * MIB, np.uint8))
    c.put("k", np.zeros(4 * MIB, np.uint8))
    assert c._wait_spare(4 * MIB)
    c.close()
    with server.client() as probe:
        eventually("the closed client's spare is freed", lambda: writing(probe) == 0)


def test_spares_yield_to_the_session_quota(make_server):
    # Writing quota 10 MiB: a 6 MiB spare would leave too little for a
    # 6 MiB blob of another length; create drops the spares and retries.
    s = make_server("--session-quota-bytes", "10M")
    with s.client() as c:
        c.put("a", np.zeros(6 * MIB, np.uint8))
        c.put("a", np.zeros(6 * MIB, np.uint8))
        assert c._wait_spare(6 * MIB)
        c.put("b", np.ones(6 * MIB + 1, np.uint8))
        assert bytes(c.get("b")) == bytes(np.ones(6 * MIB + 1, np.uint8))


@pytest.mark.parametrize("how", ["unaligned", "non-contiguous", "fortran"])
def test_put_of_odd_buffers_still_works(server, how):
    with server.client() as c:
        base = np.arange(3 * MIB, dtype=np.uint8)
        for round_ in range(3):  # the first inline, then through spares
            if how == "unaligned":
                v = memoryview(base)[1 : 2 * MIB + 3]  # odd address, odd length
                want = bytes(v)
                c.put("k", v)
            elif how == "non-contiguous":
                a = np.arange(2 * MIB, dtype=np.int32)[::2]
                with pytest.raises(BufferError, match="C-contiguous"):
                    c.put("k", a)
                c.put_array("k", a)  # put_array copies any layout
                assert np.array_equal(c.get_array("k"), a)
                continue
            else:
                a = np.asfortranarray(np.arange(MIB, dtype=np.float32).reshape(1024, 1024))
                c.put_array("k", a)
                got = c.get_array("k")
                assert got.flags.f_contiguous and np.array_equal(got, a)
                continue
            assert bytes(c.get("k")) == want
            c._wait_spare(len(want), 30)
