"""The Python package's benchmark: what a numpy user gets from CRADLE
against what they would pick instead, on the same data, in one run.

    python bench/bench.py [--socket PATH] [--mib 256] [--put-mib 100] [--memo-mib 100] [--rounds 5]

Starts nothing: it talks to a running ``cradle-server`` ($CRADLE_SOCKET or
--socket; give the server a memory budget above 2 x --mib). It reports the
median of ``--rounds`` runs of each, in one table:

* ``put_array`` and ``put`` of a --put-mib and a --mib float32 array, and
  ``get_array`` of it (a read-only ndarray over the shared pages) with one
  full read, next to ``np.copyto`` of the same array into a destination
  already faulted in (memcpy speed; the ratio is memcpy / put), and the
  same copy split between two threads (for reference: a large put copies
  on two threads when it can). Each put is
  timed twice: back to back (the client's spare blob of that length is
  still being prepared, or not yet), and with the spare ready (before each
  timed put, untimed: the spare waited for, the server's disk writes of
  the previous puts finished, and 50 ms for the pages the previous value
  gave back to be freed);
* a ``@cradle.memoize`` hit returning a --memo-mib float64 array, next to
  hits of ``joblib.Memory`` and ``diskcache`` (if installed) and a pickle of
  the array sent through a ``multiprocessing`` pipe; each hit is also read
  once in full (``a.sum()``), so that a lazy mapping is not timed empty;
* a small-value hit (an int) of ``@cradle.memoize`` next to
  ``functools.lru_cache`` (the in-process floor) and ``diskcache``.

Then the targets, each PASS or MISS from the figures of this run: the
100 MiB memoized hit (the array) at least 100x faster than
``joblib.Memory``'s, the small hit faster than ``diskcache``'s, and
``put`` of --put-mib MiB with the spare ready at least 0.8x memcpy speed.

Nothing is hard-coded: every figure is measured here, now.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

import cradle

MIB = 1 << 20


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def small_time(fn, n: int = 20_000) -> float:
    """Seconds per call of ``fn``, over ``n`` calls (median of 5 batches)."""
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - t) / n)
    return statistics.median(batches)


def fmt(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.2f} us"
    return f"{s * 1e9:.0f} ns"


def _pipe_child(conn):
    a = conn.recv()
    conn.send(a)
    conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default=None)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--put-mib", type=int, default=100)
    ap.add_argument("--memo-mib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    c = cradle.Client(args.socket, timeout=600)
    rows = []
    figs = {}

    # ---- put / get of a large array versus memcpy
    for mib in sorted({args.put_mib, args.mib}):
        rows += put_rows(c, mib, args.rounds, figs)

    # ---- memoized hit of a large array
    n = args.memo_mib * MIB // 8
    run_id = f"{os.getpid()}-{time.time_ns()}"

    @cradle.memoize(version=run_id, client=c)
    def make_cradle(k):
        return np.random.default_rng(k).random(n)

    def cradle_hit():
        make_cradle(3).sum()

    make_cradle(3)
    t_cradle = median_time(cradle_hit, args.rounds)
    t_cradle_only = median_time(lambda: make_cradle(3), args.rounds)
    rows.append((f"@cradle.memoize hit, {args.memo_mib} MiB float64", t_cradle_only, "the array only"))
    rows.append((f"@cradle.memoize hit, {args.memo_mib} MiB float64 (+ sum)", t_cradle, ""))

    tmp = tempfile.mkdtemp(prefix="cradle-bench-")
    try:
        report_hits(args, c, rows, tmp, n, t_cradle, t_cradle_only, run_id, figs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k in c.keys("memo/"):
        if run_id in k:
            c.remove(k)

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cradle {cradle.__version__}, "
          f"{os.cpu_count()} CPUs, median of {args.rounds} rounds, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| {'what':<58} | {'time':>10} | note |")
    print(f"|{'-' * 60}|{'-' * 12}|------|")
    for name, t, note in rows:
        print(f"| {name:<58} | {fmt(t) if t is not None else '-':>10} | {note} |")
    print()
    print("targets (same run)")
    for line in targets(args, figs):
        print(f"  {line}")
    return 0


def targets(args, figs):
    """PASS/MISS lines from this run's figures (a target whose baseline was
    not measured, e.g. joblib not installed, says so)."""
    def line(ok, what, got):
        if ok is None:
            return f"SKIP  {what:<62} {got}"
        return f"{'PASS' if ok else 'MISS'}  {what:<62} {got}"

    out = []
    j, cr = figs.get("joblib"), figs.get("cradle_hit")
    what = f"memoize hit {args.memo_mib} MiB >= 100x faster than joblib.Memory"
    out.append(line(None, what, "joblib not installed") if j is None else
                line(j / cr >= 100, what, f"{j / cr:.0f}x ({fmt(cr)} vs {fmt(j)})"))
    d, sm = figs.get("diskcache_small"), figs.get("cradle_small")
    what = "memoize small hit faster than diskcache's"
    out.append(line(None, what, "diskcache not installed") if d is None else
                line(sm < d, what, f"{d / sm:.2f}x ({fmt(sm)} vs {fmt(d)})"))
    p, m = figs.get(("put_ready", args.put_mib)), figs.get(("memcpy", args.put_mib))
    what = f"put {args.put_mib} MiB (spare ready) >= 0.8x memcpy speed"
    out.append(line(m / p >= 0.8, what, f"{m / p:.2f}x ({fmt(p)} vs memcpy {fmt(m)})"))
    return out


def put_rows(c, mib: int, rounds: int, figs: dict):
    """put/put_array/get_array of a ``mib`` MiB float32 array against
    memcpy into a destination already faulted in, both back to back and
    with the client's spare blob ready (waited for, untimed, before each
    timed put: what a program that puts a frame now and then sees)."""
    big = np.random.default_rng(1).random(mib * MIB // 4, dtype=np.float32)
    dst = np.empty_like(big)
    np.copyto(dst, big)  # fault the destination in
    t_memcpy = median_time(lambda: np.copyto(dst, big), rounds)
    half = big.size // 2

    def copy_two_threads():
        # What a put's copy does (two threads, chunks shared): the copy
        # half of it, for reference; numpy lets the GIL go while it copies.
        t = threading.Thread(target=np.copyto, args=(dst[:half], big[:half]))
        t.start()
        np.copyto(dst[half:], big[half:])
        t.join()

    t_memcpy2 = median_time(copy_two_threads, rounds)
    t_put_array = median_time(lambda: c.put_array("bench/big", big), rounds)
    t_put = median_time(lambda: c.put("bench/big-bytes", big), rounds)
    array_len = len(cradle._npy_header(big.dtype, big.shape, False)) + big.nbytes

    def settle(nbytes):
        # The background work of the previous put, untimed: the spare of
        # this length (the client's), the disk tier's copy of the previous
        # value (the server's writer), and the old value's pages.
        c._wait_spare(nbytes, 60)
        deadline = time.monotonic() + 60
        while c.stats()["blobs"]["disk_queued"] and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)

    def ready_time(put, nbytes):
        times = []
        put()  # starts the spare of this length
        for _ in range(rounds):
            settle(nbytes)  # each timed put starts the next spare
            t = time.perf_counter()
            put()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    t_put_array_ready = ready_time(lambda: c.put_array("bench/big", big), array_len)
    t_put_ready = ready_time(lambda: c.put("bench/big-bytes", big), big.nbytes)

    def get_read():
        a = c.get_array("bench/big")
        a.sum()

    t_get = median_time(get_read, rounds)
    t_read = median_time(lambda: big.sum(), rounds)
    c.remove("bench/big")
    c.remove("bench/big-bytes")
    figs[("memcpy", mib)] = t_memcpy
    figs[("put_ready", mib)] = t_put_ready
    x = lambda t: f"{t_memcpy / t:.2f}x memcpy speed"  # noqa: E731
    return [
        (f"memcpy (np.copyto) {mib} MiB", t_memcpy, ""),
        (f"memcpy on two threads {mib} MiB", t_memcpy2, x(t_memcpy2)),
        (f"put_array {mib} MiB, back to back", t_put_array, x(t_put_array)),
        (f"put {mib} MiB, back to back", t_put, x(t_put)),
        (f"put_array {mib} MiB, spare ready", t_put_array_ready, x(t_put_array_ready)),
        (f"put {mib} MiB, spare ready", t_put_ready, x(t_put_ready)),
        (f"get_array {mib} MiB + a.sum()", t_get, f"a.sum() alone on private memory: {fmt(t_read)}"),
    ]


def report_hits(args, c, rows, tmp, n, t_cradle, t_cradle_only, run_id, figs):
    """The comparison rows: joblib.Memory, diskcache, a pipe; small hits."""
    compare = {}
    try:
        import joblib

        mem = joblib.Memory(os.path.join(tmp, "joblib"), verbose=0)

        @mem.cache
        def make_joblib(k):
            return np.random.default_rng(k).random(n)

        make_joblib(3)
        t = median_time(lambda: make_joblib(3), args.rounds)
        figs["joblib"], figs["cradle_hit"] = t, t_cradle_only
        rows.append((f"joblib.Memory hit, {args.memo_mib} MiB float64", t,
                     f"the array only: cradle {t / t_cradle_only:.0f}x faster"))
        compare["joblib.Memory"] = median_time(lambda: make_joblib(3).sum(), args.rounds)
    except ImportError:
        rows.append(("joblib.Memory hit", None, "joblib not installed"))
    dc = None
    try:
        import diskcache

        dc = diskcache.Cache(os.path.join(tmp, "diskcache"))

        @dc.memoize()
        def make_dc(k):
            return np.random.default_rng(k).random(n)

        make_dc(3)
        t = median_time(lambda: make_dc(3), args.rounds)
        rows.append((f"diskcache hit, {args.memo_mib} MiB float64", t,
                     f"the array only: cradle {t / t_cradle_only:.0f}x faster"))
        compare["diskcache"] = median_time(lambda: make_dc(3).sum(), args.rounds)
    except ImportError:
        rows.append(("diskcache hit", None, "diskcache not installed"))

    arr = np.random.default_rng(3).random(n)
    ctx = mp.get_context("spawn")

    def through_pipe():
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_pipe_child, args=(child,))
        p.start()
        parent.send(arr)
        t = time.perf_counter()
        back = parent.recv()  # the child's pickle of it, back through the pipe
        back.sum()
        dt = time.perf_counter() - t
        p.join()
        return dt

    compare["pickle through a pipe"] = statistics.median(
        through_pipe() for _ in range(args.rounds))
    compare = {k if k.startswith("pickle") else k + " hit": v for k, v in compare.items()}
    for name, t in compare.items():
        rows.append((f"{name}, {args.memo_mib} MiB float64 (+ sum)", t,
                     f"cradle {t / t_cradle:.1f}x faster"))

    # ---- small-value hit
    @cradle.memoize(version=run_id, client=c)
    def small_cradle(k):
        return k * 2

    @functools.lru_cache(maxsize=None)
    def small_lru(k):
        return k * 2

    small_cradle(7), small_lru(7)
    t_small = small_time(lambda: small_cradle(7), 2_000)
    figs["cradle_small"] = t_small
    rows.append(("@cradle.memoize hit, small int", t_small, ""))
    rows.append(("functools.lru_cache hit (in-process floor)", small_time(lambda: small_lru(7)), ""))
    if dc is not None:
        @dc.memoize()
        def small_dc(k):
            return k * 2

        small_dc(7)
        t = small_time(lambda: small_dc(7), 2_000)
        figs["diskcache_small"] = t
        rows.append(("diskcache hit, small int", t, f"cradle {t / t_small:.2f}x faster"))
        dc.close()


if __name__ == "__main__":
    sys.exit(main())
