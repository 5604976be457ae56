"""@cradle.memoize: computed once across processes, kept on disk across a
server restart, keyed by content, and refusing what it cannot key."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

import cradle
from conftest import eventually


def runs(path) -> int:
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


def test_four_processes_run_the_body_once(server, tmp_path, monkeypatch):
    counter = str(tmp_path / "runs")
    monkeypatch.setenv("CRADLE_SOCKET", str(server.socket))
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(__import__("memo_helpers").worker, [(100_000, counter)] * 4)
    expected = float((np.arange(100_000, dtype=np.float64) ** 2).sum())
    assert results == [(expected, False, (100_000,))] * 4
    assert runs(counter) == 1
    with server.client() as c:
        keys = c.keys("memo/memo_helpers.slow_squares/v1/")
        assert len(keys) == 1
        # The result is a .npy blob: get_array reads it too.
        assert c.get_array(keys[0]).shape == (100_000,)


def test_a_restarted_server_serves_the_result_from_disk(server, tmp_path):
    counter = tmp_path / "runs"

    def body(n):
        with open(counter, "a") as f:
            f.write("ran\n")
        return {"n": n, "squares": [i * i for i in range(n)]}

    body.__qualname__ = "restart_body"
    with server.client() as c:
        f = cradle.memoize(version="a", client=c)(body)
        first = f(5)
        assert f(5) == first == {"n": 5, "squares": [0, 1, 4, 9, 16]}
        assert runs(counter) == 1
        eventually("the result reached the disk tier",
                   lambda: c.stats()["blobs"]["disk_entries"] >= 1 and c.stats()["blobs"]["disk_queued"] == 0)
    server.stop()
    server.start()
    with server.client() as c:
        assert c.stats()["blobs"]["cache_entries"] == 0
        f = cradle.memoize(version="a", client=c)(body)
        assert f(5) == first
        assert runs(counter) == 1, "the body ran again after the restart"
        assert c.stats()["blobs"]["disk_hits"] >= 1


def test_array_contents_make_the_key(server, tmp_path):
    counter = tmp_path / "runs"
    with server.client() as c:
        @cradle.memoize(version=1, client=c)
        def total(a, scale=1.0):
            with open(counter, "a") as f:
                f.write("ran\n")
            return np.asarray(a.sum() * scale)

        zeros, ones = np.zeros(1000, np.float32), np.ones(1000, np.float32)
        assert total.cache_key(zeros) != total.cache_key(ones)
        # Same bytes, other dtype or shape: other keys.
        assert total.cache_key(zeros) != total.cache_key(np.zeros(1000, np.int32))
        assert total.cache_key(zeros) != total.cache_key(zeros.reshape(10, 100))
        # Defaults applied, keywords or positions: one key; 1 and 1.0 differ.
        assert total.cache_key(zeros) == total.cache_key(a=zeros, scale=1.0)
        assert total.cache_key(zeros, 1) != total.cache_key(zeros, 1.0)
        # A copy with the same contents is the same key; a view is keyed
        # by its contents too.
        assert total.cache_key(zeros.copy()) == total.cache_key(zeros)
        assert total.cache_key(np.arange(10)[::2]) == total.cache_key(np.array([0, 2, 4, 6, 8]))
        assert float(total(zeros)) == 0.0 and float(total(ones)) == 1000.0
        assert runs(counter) == 2
        ones2 = np.ones(1000, np.float32)
        hit = total(ones2)
        assert float(hit) == 1000.0 and runs(counter) == 2
        with pytest.raises(ValueError, match="read-only"):
            hit[...] = 2.0


def test_unkeyable_arguments_raise_type_error(server, tmp_path):
    called = []
    with server.client() as c:
        @cradle.memoize(version=1, client=c)
        def f(x):
            called.append(x)
            return b"x"

        class Opaque:
            pass

        for bad in (Opaque(), [1, Opaque()], {"k": object()}, np.array([object()]), lambda: 1):
            with pytest.raises(TypeError, match="cannot key"):
                f(bad)
        assert called == []
        with pytest.raises(TypeError):
            cradle.memoize(version=1.5)


def test_results_bytes_pickles_and_errors(server, tmp_path):
    with server.client() as c:
        calls = []

        @cradle.memoize(version=1, client=c)
        def blob(n):
            calls.append(n)
            if n < 0:
                raise ValueError("negative")
            return bytes(range(n))

        mv = blob(10)
        assert isinstance(mv, memoryview) and mv.readonly and bytes(mv) == bytes(range(10))
        assert bytes(blob(10)) == bytes(range(10)) and calls == [10]
        # A failed computation gives the key up: the next call computes.
        for _ in range(2):
            with pytest.raises(ValueError, match="negative"):
                blob(-1)
        assert calls == [10, -1, -1]

        @cradle.memoize(version=1, client=c)
        def structured(key, items=("a",)):
            return {"key": key, "items": list(items), "none": None}

        assert structured(("x", 1), items={"b", "a"}) == {"key": ("x", 1), "items": list({"b", "a"}), "none": None}
        assert structured(("x", 1), items={"a", "b"})["key"] == ("x", 1)


def test_threads_sharing_one_client_run_the_body_once(server, tmp_path):
    """Threads of one process share the client's server session; the
    client lets one of them compute a key at a time, so the body runs once
    and every thread gets its result."""
    import threading
    import time

    counter = tmp_path / "runs"

    def body(n):
        with open(counter, "a") as f:
            f.write("ran\n")
        time.sleep(0.3)  # every other thread asks meanwhile
        return np.arange(n, dtype=np.int64)

    body.__qualname__ = "threads_body"
    with server.client() as c:
        f = cradle.memoize(version="t", client=c)(body)
        got = [None] * 6
        threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, f(1000)))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        for g in got:
            assert np.array_equal(g, np.arange(1000, dtype=np.int64))
        assert runs(counter) == 1
