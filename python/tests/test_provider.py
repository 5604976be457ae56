"""Python providers of bytes methods: answered for a Rust caller (the
``cradle call`` command) and a Python caller, blobs both ways without a
copy, handler errors, and a provider killed mid-call (``ProviderGone``)."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import cradle
from conftest import eventually, reap, run_py

PROVIDER = r"""
import os, sys, time
import numpy as np
import cradle

c = cradle.Client()

@c.provides("py.upper")
def upper(body, blobs):
    return body.upper()

@c.provides("py.sum", version=2)
def total(body, blobs):
    # Blob arguments: read-only buffers over the caller's pages.
    s = sum(float(np.frombuffer(b, dtype=np.float64).sum()) for b in blobs)
    ro = all(memoryview(b).readonly for b in blobs)
    out = c.create(8 * 4)
    np.frombuffer(out, dtype=np.float64)[:] = s
    return (repr((s, ro)).encode(), [out, b"tail"])

@c.provides("py.echo_blobs")
def echo_blobs(body, blobs):
    return None, blobs  # the argument blobs, passed back by handle

@c.provides("py.fail")
def fail(body, blobs):
    raise KeyError("no such thing")

@c.provides("py.hang")
def hang(body, blobs):
    open(body.decode(), "w").close()  # tells the test the call is here
    time.sleep(3600)

print("ready", flush=True)
served, errors = c.run(concurrency=2)
print("done", served, errors, flush=True)
"""


def wait_offered(server, name):
    def offered():
        with server.client() as c:
            try:
                c.call_bytes(name, b"", timeout=5)
                return True
            except cradle.UnknownMethod:
                return False
            except cradle.CradleError:
                return True
    eventually(f"{name} is offered", offered)


@pytest.fixture
def provider(server):
    p = run_py(PROVIDER, server)
    assert p.stdout.readline().strip() == "ready"
    wait_offered(server, "py.upper")
    yield p
    reap(p)


def test_a_python_provider_answers_rust_and_python_callers(server, provider):
    out = server.cli("call", "py.upper", "--raw-hex", b"hello".hex()).stdout.decode()
    assert b"HELLO".hex() in out, out
    with server.client() as c:
        body, blobs = c.call_bytes("py.upper", b"from python")
        assert body == b"FROM PYTHON" and blobs == []
        a = np.arange(1000, dtype=np.float64)
        w = c.create(a.nbytes)
        np.frombuffer(w, dtype=np.float64)[:] = a
        sealed = w.seal()
        body, blobs = c.call_bytes("py.sum", version=2, blobs=[sealed, np.ones(3)])
        assert body == repr((float(a.sum()) + 3.0, True)).encode()
        assert len(blobs) == 2
        r = np.frombuffer(blobs[0], dtype=np.float64)
        assert list(r) == [float(a.sum()) + 3.0] * 4 and not r.flags.writeable
        assert bytes(blobs[1]) == b"tail"
        body, back = c.call_bytes("py.echo_blobs", blobs=[sealed])
        assert body == b"" and len(back) == 1 and back[0].handle == sealed.handle
        assert np.array_equal(np.frombuffer(back[0], dtype=np.float64), a)
        with pytest.raises(cradle.UnknownMethod):
            c.call_bytes("py.sum", version=1)
        with pytest.raises(cradle.HandlerError, match="KeyError: 'no such thing'"):
            c.call_bytes("py.fail")


def test_a_provider_killed_mid_call_is_provider_gone(server, provider, tmp_path):
    here = tmp_path / "in-call"
    result = {}

    def caller():
        with server.client() as c:
            try:
                c.call_bytes("py.hang", str(here).encode(), timeout=120)
                result["r"] = "answered"
            except cradle.CradleError as e:
                result["r"] = e

    t = threading.Thread(target=caller)
    t.start()
    eventually("the call reached the handler", here.exists)
    os.kill(provider.pid, signal.SIGKILL)
    t.join(120)
    assert isinstance(result.get("r"), cradle.ProviderGone), result
    assert isinstance(result["r"], cradle.RemoteError)


def test_stop_ends_run_and_withdraws(server):
    with server.client() as c, server.client() as caller:
        c.serve_bytes("py.echo", lambda body, blobs: body)
        stopped = []

        @c.provides("py.stop")
        def stop(body, blobs):
            stopped.append(c.stop())
            return b"stopping"

        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", c.run()))
        t.start()
        wait_offered(server, "py.echo")
        assert caller.call_bytes("py.echo", b"abc") == (b"abc", [])
        assert caller.call_bytes("py.stop")[0] == b"stopping"
        t.join(60)
        assert stopped == [True]
        served, errors = out["r"]
        assert served >= 2 and errors == 0
        with pytest.raises(cradle.UnknownMethod):
            caller.call_bytes("py.echo", b"abc")
        assert c.stop() is False
        with pytest.raises(ValueError):
            server.client().run()


def test_ctrl_c_stops_a_provider(server):
    p = run_py(PROVIDER.replace('print("done"', 'print("never"') + "", server)
    try:
        assert p.stdout.readline().strip() == "ready"
        wait_offered(server, "py.upper")
        p.send_signal(signal.SIGINT)
        assert p.wait(60) != 0  # KeyboardInterrupt out of run()
        with server.client() as c:
            eventually("the methods are withdrawn", lambda: _unknown(c, "py.upper"))
    finally:
        reap(p)


def _unknown(c, name):
    try:
        c.call_bytes(name, b"", timeout=5)
        return False
    except cradle.UnknownMethod:
        return True


MEMO_PROVIDER = r"""
import os
import cradle

c = cradle.Client()
runs = 0

@c.provides("py.memo.square", memoized=True)
def square(body, blobs):
    global runs
    runs += 1
    n = int(body.decode()) + sum(len(b) for b in blobs)
    return f"{n * n} run {runs} pid {os.getpid()}".encode()

print("ready", flush=True)
c.run(concurrency=2)
"""


def test_a_memoized_python_provider_runs_once_and_outlives_its_process(server):
    p = run_py(MEMO_PROVIDER, server)
    try:
        assert p.stdout.readline().strip() == "ready"
        wait_offered(server, "py.memo.square")
        with server.client() as c:
            # wait_offered's empty call ran it once; ours are new keys.
            first, _ = c.call_bytes("py.memo.square", b"12")
            assert first.startswith(b"144 run ")
            # Equal calls, from this process and from the command line:
            # answered from the cache, the handler does not run again.
            assert c.call_bytes("py.memo.square", b"12")[0] == first
            out = server.cli("call", "py.memo.square", "--raw-hex", b"12".hex()).stdout
            assert first.hex() in out.decode(), out
            # Blob arguments count by content: two blobs, equal bytes.
            a = c.call_bytes("py.memo.square", b"1", blobs=[b"abc"])[0]
            b = c.call_bytes("py.memo.square", b"1", blobs=[bytearray(b"abc")])[0]
            assert a == b and a.startswith(b"16 run ")
            assert c.call_bytes("py.memo.square", b"1", blobs=[b"abd"])[0] != a
            # The provider gone, its answers stay.
            os.kill(p.pid, signal.SIGKILL)
            p.wait(60)
            eventually("the provider is withdrawn", lambda: _no_provider(c))
            assert c.call_bytes("py.memo.square", b"12")[0] == first
    finally:
        reap(p)


def _no_provider(c):
    """Whether a miss of py.memo.square finds no provider (a new body:
    nothing cached for it; errors are not cached)."""
    try:
        c.call_bytes("py.memo.square", b"999", timeout=5)
        return False
    except cradle.UnknownMethod:
        return True
    except cradle.ProviderGone:
        return False
