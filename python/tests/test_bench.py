"""The benchmark script runs (tiny sizes, one round): its figures belong in
docs/benchmarks.md, measured by hand; here only that it works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"


def test_the_benchmark_runs_once(server):
    r = subprocess.run(
        [sys.executable, str(BENCH), "--socket", str(server.socket), "--mib", "2",
         "--memo-mib", "1", "--rounds", "1"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    for row in ("memcpy", "put_array", "get_array", "@cradle.memoize hit", "lru_cache",
                "targets (same run)", "put 100 MiB (spare ready)"):
        assert row in r.stdout, r.stdout
