"""Memoized functions the multiprocessing test's workers import (a spawned
worker imports this module by name)."""

from __future__ import annotations

import time

import numpy as np

import cradle


@cradle.memoize(version=1)
def slow_squares(n: int, counter: str):
    """Counts its runs in the file ``counter``, then computes slowly enough
    that the workers' calls overlap."""
    with open(counter, "a") as f:
        f.write("ran\n")
    time.sleep(1.0)
    return np.arange(n, dtype=np.float64) ** 2


def worker(args):
    n, counter = args
    a = slow_squares(n, counter)
    return float(a.sum()), bool(a.flags.writeable), a.shape
