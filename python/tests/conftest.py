"""Fixtures of the Python package's tests: a real ``cradle-server`` per test
on a socket in a private temporary directory, the ``cradle`` CLI, a
watchdog, and probes of this machine's memory (/proc)."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A test that hangs dumps every thread's stack and ends the run instead of
# blocking CI: a watchdog, not a limit on how long a test may take.
WATCHDOG_SECONDS = float(os.environ.get("CRADLE_TEST_WATCHDOG", "300"))


def _bin(env: str, name: str) -> Path:
    p = Path(os.environ.get(env) or REPO / "target" / "debug" / name)
    if not p.exists():
        pytest.fail(f"{p} not found: build it (cargo build -p cradle-server -p cradle-client) or set {env}")
    return p


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def eventually(what: str, probe, wait: float = 60.0, every: float = 0.02):
    """Polls ``probe()`` until it returns a true value (returned); fails with
    ``what`` and the last value if it never does within ``wait`` seconds (a
    bound on waiting for the condition, not an assertion about speed)."""
    end = time.monotonic() + wait
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > end:
            pytest.fail(f"never happened: {what} (last: {last!r})")
        time.sleep(every)


class Server:
    """A ``cradle-server`` process on ``socket`` (its disk tier in ``disk``)."""

    def __init__(self, tmp: Path, *args: str):
        self.dir = tmp
        self.socket = tmp / "cradle.sock"
        self.disk = tmp / "disk"
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [str(_bin("CRADLE_SERVER_BIN", "cradle-server")), "--socket", str(self.socket),
             "--disk-cache", str(self.disk), "--log-level", "warn", *self.args],
            stdin=subprocess.DEVNULL,
        )
        import cradle

        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"cradle-server exited with {self.proc.returncode}")
            try:
                with cradle.Client(str(self.socket)) as c:
                    return c.ping(b"ready") == b"ready"
            except cradle.ConnectError:
                return False

        eventually("the server accepts sessions", ready)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, **kw):
        import cradle

        return cradle.Client(str(self.socket), **kw)

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_bin("CRADLE_BIN", "cradle")), "--socket", str(self.socket), *args],
            check=True, capture_output=True, timeout=WATCHDOG_SECONDS, **kw,
        )


@pytest.fixture
def tmpdir_private(tmp_path):
    tmp_path.chmod(0o700)
    return tmp_path


@pytest.fixture
def server(tmpdir_private):
    s = Server(tmpdir_private)
    yield s
    s.stop()


@pytest.fixture
def make_server(tmpdir_private):
    """Starts a server with extra command-line options (limits)."""
    made = []

    def make(*args: str) -> Server:
        d = tmpdir_private / f"s{len(made)}"
        d.mkdir(mode=0o700)
        s = Server(d, *args)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def run_py(code: str, server: Server, **kw) -> subprocess.Popen:
    """Starts ``code`` in a new Python process connected to ``server``
    (``CRADLE_SOCKET`` set), with pipes for stdin and stdout."""
    env = dict(os.environ, CRADLE_SOCKET=str(server.socket), PYTHONFAULTHANDLER="1")
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kw,
    )


def reap(p: subprocess.Popen | None) -> None:
    """Kills a child started by ``run_py`` (if still running), waits for it
    and closes its pipes."""
    if p is None:
        return
    if p.poll() is None:
        p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            f.close()


def read_json(p: subprocess.Popen) -> dict:
    line = p.stdout.readline()
    if not line:
        p.wait()
        pytest.fail(f"child exited with {p.returncode} before answering")
    return json.loads(line)


def meminfo(field: str) -> int:
    """A field of /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def session_leases(stats: dict, pid: int) -> int | None:
    """Leases held by the session of process ``pid`` (None: no session)."""
    for s in stats["per_session"]:
        if s["pid"] == pid:
            return s["leases"]
    return None


def leases_of(stats: dict, session_id: int) -> int | None:
    """Leases held by session ``session_id`` (None: no such session)."""
    for s in stats["per_session"]:
        if s["id"] == session_id:
            return s["leases"]
    return None
