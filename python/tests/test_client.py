"""Client basics: connecting, ping, stats, closing, threads, and the
exceptions each failure maps to."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import cradle


def test_ping_stats_and_context_manager(server):
    with server.client() as c:
        assert c.ping() == b""
        assert c.ping(b"hello") == b"hello"
        assert c.server_pid == server.pid
        s = c.stats()
        assert s["pid"] == server.pid
        assert s["sessions"] >= 1
        assert c.session_id in [p["id"] for p in s["per_session"]]
        assert {"leases", "cache_entries", "cache_budget", "disk_enabled"} <= s["blobs"].keys()
        assert s["blobs"]["disk_enabled"] is True
        assert not c.closed
    assert c.closed
    with pytest.raises(cradle.CradleError, match="closed"):
        c.ping()
    c.close()  # twice is fine


def test_default_socket_is_cradle_socket(server, monkeypatch):
    monkeypatch.setenv("CRADLE_SOCKET", str(server.socket))
    assert cradle.default_socket_path() == server.socket
    with cradle.Client() as c:
        assert c.socket == server.socket
        assert c.ping(b"x") == b"x"


def test_closing_ends_the_session_on_the_server(server):
    with server.client() as watcher:
        c = server.client()
        sid = c.session_id
        assert sid in [p["id"] for p in watcher.stats()["per_session"]]
        c.close()
        from conftest import eventually

        eventually("the session is gone", lambda: sid not in [p["id"] for p in watcher.stats()["per_session"]])


def test_threads_share_one_client(server):
    errors = []
    with server.client() as c:

        def work(t):
            try:
                for i in range(100):
                    payload = f"{t}/{i}".encode()
                    assert c.ping(payload) == payload
                    c.put(f"t{t}/{i % 5}", payload)
                    got = c.get(f"t{t}/{i % 5}")
                    assert bytes(got) == payload
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(c.keys("t")) == 8 * 5


def test_error_classes_form_one_hierarchy():
    for name in cradle.__all__:
        obj = getattr(cradle, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, cradle.CradleError), name
            assert obj.__module__ == "cradle", name
    assert issubclass(cradle.NoServer, cradle.ConnectError)
    for name in ["QuotaExceeded", "CacheFull", "BadHandle", "Shutdown", "ProviderGone", "Busy"]:
        assert issubclass(getattr(cradle, name), cradle.RemoteError), name


def test_no_server_is_no_server(tmpdir_private):
    path = tmpdir_private / "nobody.sock"
    with pytest.raises(cradle.NoServer) as e:
        cradle.Client(str(path))
    # The Rust error's message, word for word.
    assert str(e.value) == f"no CRADLE server at {path}; start one with `cradle-server`"
    assert isinstance(e.value, cradle.ConnectError)


def test_peer_dead_when_the_server_is_killed(server):
    c = server.client()
    server.stop(signal.SIGKILL)
    with pytest.raises(cradle.PeerDead, match="died"):
        c.ping()


def test_shutdown_when_the_server_stops_cleanly(server):
    c = server.client()
    server.stop(signal.SIGTERM)
    with pytest.raises(cradle.Shutdown):
        c.ping()


def test_timeout_when_the_server_is_stopped(server):
    c = server.client(timeout=0.3)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(cradle.Timeout, match="no response within"):
            c.ping(b"are you there")
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert c.ping(b"back") == b"back"


def test_message_too_large(server):
    with server.client() as c, pytest.raises(cradle.MessageTooLarge, match="send large data as a blob"):
        c.ping(b"x" * (64 << 20))


def test_quota_exceeded_when_holding_too_many_leases(make_server):
    s = make_server("--session-max-leases", "2")
    with s.client() as c:
        for i in range(3):
            c.put(f"k{i}", b"v%d" % i)
        held = [c.get("k0"), c.get("k1")]
        with pytest.raises(cradle.QuotaExceeded, match="quota exceeded"):
            c.get("k2")
        del held


def test_cache_full_when_everything_is_held(make_server):
    s = make_server("--mem-cache-bytes", "4M")
    with s.client() as c:
        c.put("a", bytes(3 << 20))
        held = c.get("a")  # a reader holds it: it cannot be evicted
        with pytest.raises(cradle.CacheFull):
            c.put("b", bytes(3 << 20))
        del held


def test_forked_child_must_connect_its_own_client(server):
    c = server.client()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the exception's class name, then leave at once
        try:
            c.ping()
            name = "no error"
        except BaseException as e:
            name = type(e).__name__
        os.write(w, name.encode())
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.read(r, 100) == b"Forked"
    assert c.ping(b"parent") == b"parent"


def test_a_waiting_call_releases_the_gil(server):
    # A thread waits in a call the stopped server cannot answer; meanwhile
    # this thread runs Python code. Were the GIL held during the wait, the
    # loop below could only run once the call had timed out (60 s), and the
    # thread would be finished by then.
    c = server.client(timeout=60)
    entered, result = threading.Event(), []

    def call():
        entered.set()
        result.append(c.ping(b"after the stop"))

    os.kill(server.pid, signal.SIGSTOP)
    try:
        t = threading.Thread(target=call)
        t.start()
        entered.wait()
        n = 0
        for i in range(3_000_000):  # pure Python: needs the GIL throughout
            n += i & 1
        assert n == 1_500_000
        assert t.is_alive() and result == []
    finally:
        os.kill(server.pid, signal.SIGCONT)
    t.join()
    assert result == [b"after the stop"]
