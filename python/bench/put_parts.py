"""Where the time of a large ``put`` goes: the kernel's costs for a fresh
memfd, then the steps of a put through a ready spare blob.

    python bench/put_parts.py [--socket PATH] [--mib 256] [--rounds 5]

Part 1 needs no server: a memfd of --mib MiB is mapped shared and filled
with ``np.copyto`` after each way of faulting it in (none; ``MAP_POPULATE``;
``madvise(MADV_POPULATE_WRITE)``), next to ``np.copyto`` into private
memory already faulted in (memcpy speed); then the unmap of a populated
mapping (what sealing a large blob needs first) and the close that frees
the pages. Part 2 talks to a running ``cradle-server`` ($CRADLE_SOCKET or
--socket): with the client's spare of that length ready, the time of
taking it (``create``), copying into it, sealing it (unmap + ``SealLarge``)
and putting it in the cache. Medians of --rounds; everything measured here.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time

import numpy as np

import cradle

MIB = 1 << 20
MADV_POPULATE_WRITE = 23  # linux/mman.h, Linux 5.14+


def part1(mib: int, rounds: int) -> None:
    n = mib * MIB
    src = np.random.default_rng(1).random(n // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    rows = {k: [] for k in ("memcpy", "none", "map_populate", "populate_write", "munmap", "close")}
    for _ in range(rounds):
        t = time.perf_counter()
        np.copyto(dst, src)
        rows["memcpy"].append(time.perf_counter() - t)
        for how in ("none", "map_populate", "populate_write"):
            fd = os.memfd_create("put-parts")
            os.ftruncate(fd, n)
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if how == "map_populate" else 0)
            t0 = time.perf_counter()
            m = mmap.mmap(fd, n, flags=flags)
            if how == "populate_write":
                m.madvise(MADV_POPULATE_WRITE)
            t1 = time.perf_counter()
            view = np.frombuffer(m, dtype=np.float32)
            np.copyto(view, src)
            t2 = time.perf_counter()
            rows[how].append((t1 - t0, t2 - t1))
            del view
            t3 = time.perf_counter()
            m.close()
            t4 = time.perf_counter()
            os.close(fd)
            t5 = time.perf_counter()
            if how == "populate_write":
                rows["munmap"].append(t4 - t3)
                rows["close"].append(t5 - t4)
    med = {k: statistics.median(v) if k in ("memcpy", "munmap", "close") else
           tuple(statistics.median(x) for x in zip(*v)) for k, v in rows.items()}
    ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    print(f"## the kernel's costs, {mib} MiB memfd")
    print(f"memcpy into faulted private memory: {ms(med['memcpy'])}")
    for how, what in (("none", "no populate (a fault per page)"),
                      ("map_populate", "MAP_POPULATE"),
                      ("populate_write", "MADV_POPULATE_WRITE")):
        prep, copy = med[how]
        print(f"{what}: populate {ms(prep)}, then the copy {ms(copy)} "
              f"({med['memcpy'] / copy:.2f}x memcpy speed)")
    print(f"munmap of the populated mapping: {ms(med['munmap'])}; "
          f"close (frees the pages): {ms(med['close'])}")


def part2(socket: str | None, mib: int, rounds: int) -> None:
    big = np.random.default_rng(1).random(mib * MIB // 4, dtype=np.float32)
    dst = np.empty_like(big)
    np.copyto(dst, big)
    c = cradle.Client(socket, timeout=600)
    key = f"bench/put-parts-{os.getpid()}"
    c.put(key, big)
    c.put(key, big)  # a length written twice: the client prepares a spare
    steps = []
    for _ in range(rounds):
        if not c._wait_spare(big.nbytes, 120):
            sys.exit("no spare became ready (spare_bytes too small?)")
        t = time.perf_counter()
        np.copyto(dst, big)
        memcpy = time.perf_counter() - t
        t0 = time.perf_counter()
        w = c.create(big.nbytes)
        t1 = time.perf_counter()
        np.frombuffer(w, dtype=np.float32)[:] = big
        t2 = time.perf_counter()
        blob = w.seal()
        t3 = time.perf_counter()
        blob.put(key)
        t4 = time.perf_counter()
        blob.release()
        steps.append((memcpy, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    c.remove(key)
    m = [statistics.median(x) * 1e3 for x in zip(*steps)]
    print(f"## a put through a ready spare, {mib} MiB")
    print(f"memcpy {m[0]:.1f} ms | take the spare {m[1]:.2f} ms | copy {m[2]:.1f} ms "
          f"({m[0] / m[2]:.2f}x memcpy speed) | seal (unmap + SealLarge) {m[3]:.1f} ms | "
          f"cache put {m[4]:.1f} ms | all {sum(m[1:]):.1f} ms ({m[0] / sum(m[1:]):.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default=None)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, medians of {args.rounds}")
    part1(args.mib, args.rounds)
    part2(args.socket, args.mib, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
