"""The key of a memoized call is the same whichever encoder makes it: the
Rust fast path (``_memo_key``, plain values) and the Python encoder
(``_encode``, everything) write the same bytes. No server needed."""

from __future__ import annotations

import cradle
from cradle import _encode, _memo_key, digest

import numpy as np
import pytest

PREFIX = "memo/m.f/v1/"


def python_key(names, values) -> str:
    out = bytearray(b"cradle.memoize 1\n")
    _encode(list(zip(names, values)), out)
    return PREFIX + digest(out).hex()


PLAIN = [
    None, True, False, 0, 1, -1, 7, 2**63 - 1, -(2**63), 2**63, -(2**64) - 5, 10**200,
    0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 1e-300,
    "", "abc", "é ü 漢字 🙂", "a\x00b", b"", b"bytes\x00\xff", b"x" * 100_000,
    (), (1,), (1, "a", None), [], [1, [2, [3, (4,)]]], ("nested", [b"b", 2.5, False]),
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_the_fast_key_is_the_python_key(value):
    names, values = ("x",), (value,)
    fast = _memo_key(PREFIX, names, values)
    assert fast is not None
    assert fast == python_key(names, values)


def test_several_arguments():
    names, values = ("a", "b", "c"), (1, "two", [3.0, (None, True)])
    assert _memo_key(PREFIX, names, values) == python_key(names, values)


def test_types_are_told_apart():
    keys = {_memo_key(PREFIX, ("x",), (v,)) for v in (1, 1.0, True, "1", b"1", (1,), [1])}
    assert len(keys) == 7


OTHER = [
    {"k": 1}, {1, 2}, frozenset({3}), 1 + 2j, bytearray(b"ab"), memoryview(b"ab"),
    np.int64(3), np.arange(3), [1, {"nested": "dict"}], "lone \ud800 surrogate",
    type("IntSub", (int,), {})(5), type("StrSub", (str,), {})("s"), object(),
]


@pytest.mark.parametrize("value", OTHER, ids=lambda v: type(v).__name__)
def test_other_values_go_to_the_python_encoder(value):
    # Not handled by the fast path: None, so that the Python encoder keys
    # the value (or raises TypeError, as for object()).
    assert _memo_key(PREFIX, ("x",), (value,)) is None


def test_decorated_functions_use_the_same_keys_both_ways():
    @cradle.memoize(version=3)
    def f(a, b=2):
        return a

    # Positional (fast path) and keyword/default (bound, then fast path)
    # calls agree with the Python encoder.
    assert f.cache_key(1) == f.cache_key(1, 2) == f.cache_key(a=1) == f.cache_key(b=2, a=1)
    prefix = f.cache_key(1).rsplit("/", 1)[0] + "/"
    assert f.cache_key(1) == prefix + python_key(("a", "b"), (1, 2))[len(PREFIX):]
    # Values the fast path leaves to Python key the same as before.
    assert f.cache_key({"k": 1}) == prefix + python_key(("a", "b"), ({"k": 1}, 2))[len(PREFIX):]
