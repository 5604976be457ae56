"""Across processes: a 256 MiB float32 array put by one process is read by
another as an ndarray over the same pages (one copy in shared memory, not
two), and kill -9 of a process that holds leases gives them back."""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import eventually, meminfo, read_json, reap, run_py, session_leases

MIB = 1 << 20
N = (256 * MIB) // 4  # float32 elements: 256 MiB

# Shared by both children: the status fields of this process, and the
# device:inode of the mapping that holds an address.
PROBES = r"""
import json, os, sys
import numpy as np
import cradle

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def inode_of(address):
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi:
            return parts[3] + ":" + parts[4], parts[5] if len(parts) > 5 else ""
    raise LookupError(hex(address))

def say(**kw):
    print(json.dumps(kw), flush=True)

N = %d
""" % N

PRODUCER = PROBES + r"""
a = (np.arange(N, dtype=np.int64) %% 1000).astype(np.float32)
c = cradle.Client()
c.put_array("big", a)
del a
back = c.get_array("big")
dev, name = inode_of(back.__array_interface__["data"][0])
say(inode=dev, name=name)
sys.stdin.readline()  # hold the array until told to go
"""

CONSUMER = PROBES + r"""
c = cradle.Client()
anon0, shm0 = status("RssAnon"), status("RssShmem")
x = c.get_array("big")
total = float(x.sum(dtype=np.float64))  # reads every page
rng = np.random.default_rng(7)
idx = rng.integers(0, N, 1000)
spot = bool(np.array_equal(x[idx], (idx %% 1000).astype(np.float32)))
anon1, shm1 = status("RssAnon"), status("RssShmem")
dev, name = inode_of(x.__array_interface__["data"][0])
try:
    x[0] = 1.0
    write = "no error"
except ValueError as e:
    write = "ValueError: " + str(e)
say(shape=list(x.shape), dtype=str(x.dtype), total=total, spot=spot,
    anon_growth=anon1 - anon0, shm_growth=shm1 - shm0, inode=dev, name=name,
    write=write, session=c.session_id)
sys.stdin.readline()
"""


def expected_sum() -> float:
    full, rest = divmod(N, 1000)
    return float(full * sum(range(1000)) + sum(range(rest)))


def cross(server) -> dict:
    """One producer puts the array, one consumer reads it; returns what the
    consumer measured and the machine's Shmem growth over both."""
    shmem0 = meminfo("Shmem")
    producer = run_py(PRODUCER % (), server)
    consumer = None
    try:
        p = read_json(producer)
        after_put = meminfo("Shmem")
        consumer = run_py(CONSUMER % (), server)
        r = read_json(consumer)
        after_get = meminfo("Shmem")
        report = dict(r, producer_inode=p["inode"], shmem_growth_mib=(after_get - shmem0) / MIB,
                      after_put_mib=(after_put - shmem0) / MIB)
        print(json.dumps(report))

        assert r["shape"] == [N] and r["dtype"] == "float32"
        assert r["total"] == expected_sum() and r["spot"]
        assert r["write"] == "ValueError: assignment destination is read-only"
        # Both processes map the same memfd: the very same pages.
        assert r["inode"] == p["inode"] and "/memfd:" in r["name"], report
        # The consumer mapped 256 MiB of shared memory and copied none of it.
        assert r["shm_growth"] >= 250 * MIB, report
        assert r["anon_growth"] < 32 * MIB, report
        with server.client() as c:
            assert c.stats()["blobs"]["cache_bytes"] >= 256 * MIB
        return report
    finally:
        reap(producer)
        reap(consumer)
        with server.client() as c:
            c.remove("big")


def test_a_256_mib_array_crosses_processes_without_a_copy(server):
    # Machine-wide, Shmem grows by about one copy of the array, not two.
    # Other processes on the machine move Shmem too (other tests, other
    # users): a round disturbed by them is measured again, up to 3 times.
    rounds = []
    for _ in range(3):
        r = cross(server)
        rounds.append(r["shmem_growth_mib"])
        if 230 <= r["shmem_growth_mib"] < 384:
            return
    pytest.fail(f"Shmem grew by {rounds} MiB in 3 rounds, not about one copy (256 MiB)")


HOLDER = r"""
import json, sys
import cradle
c = cradle.Client()
held = [c.get("k%d" % i) for i in range(5)]
arr = __import__("numpy").frombuffer(held[0], dtype="uint8")
print(json.dumps({"session": c.session_id}), flush=True)
sys.stdin.readline()
"""


def test_kill_9_of_a_process_holding_leases_releases_them(server):
    with server.client() as c:
        for i in range(5):
            c.put(f"k{i}", bytes([i]) * (1 << 20))
        base = c.stats()["blobs"]["leases"]
        holder = run_py(HOLDER, server)
        try:
            read_json(holder)
            s = c.stats()
            assert session_leases(s, holder.pid) == 5
            assert s["blobs"]["leases"] == base + 5
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
            eventually("the killed process's session and leases are gone", lambda: (
                session_leases(c.stats(), holder.pid) is None
                and c.stats()["blobs"]["leases"] == base))
            # Nothing it held blocks eviction or removal now.
            for i in range(5):
                assert c.remove(f"k{i}")
        finally:
            reap(holder)


def test_a_child_process_reads_what_the_parent_wrote(server):
    # multiprocessing with the spawn method: the child makes its own client.
    import multiprocessing as mp

    with server.client() as c:
        import numpy as np

        c.put_array("m", np.arange(10, dtype=np.int32) * 3)
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        got = pool.starmap(_child_sum, [(str(server.socket), "m")] * 4)
    assert got == [135] * 4


def _child_sum(socket: str, key: str) -> int:
    import cradle

    with cradle.Client(socket) as c:
        return int(c.get_array(key).sum())
