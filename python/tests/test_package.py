"""The package's surface: stubs for every public name, docstrings, and the
Python code blocks of the READMEs run as written."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cradle

PKG = Path(cradle.__file__).parent
REPO = Path(__file__).resolve().parents[2]


def stub_names() -> tuple[set[str], dict[str, set[str]]]:
    tree = ast.parse((PKG / "__init__.pyi").read_text())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
            if isinstance(node, ast.ClassDef):
                members[node.name] = {
                    n.name for n in node.body if isinstance(n, ast.FunctionDef)
                }
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
    return top, members


def test_every_public_name_has_a_stub_and_a_docstring():
    top, members = stub_names()
    assert set(cradle.__all__) <= top, set(cradle.__all__) - top
    assert (PKG / "py.typed").exists()
    for name in cradle.__all__:
        obj = getattr(cradle, name)
        if callable(obj):
            assert obj.__doc__, name
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            public = {m for m in dir(obj) if not m.startswith("_")}
            assert public <= members[name], (name, public - members[name])
            for m in public:
                assert getattr(obj, m).__doc__, f"{name}.{m}"


def python_blocks(md: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md.read_text(), flags=re.S)


@pytest.mark.parametrize("md", ["README.md", "python/README.md"])
def test_readme_python_blocks_run(server, md, tmp_path):
    blocks = python_blocks(REPO / md)
    assert blocks, f"{md} has no python block"
    env = dict(os.environ, CRADLE_SOCKET=str(server.socket))
    for i, code in enumerate(blocks):
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{md}, python block {i + 1}:\n{code}\n{r.stderr}"


def test_module_docstring_example_runs(server, monkeypatch):
    import doctest

    monkeypatch.setenv("CRADLE_SOCKET", str(server.socket))
    failed, attempted = doctest.testmod(cradle, raise_on_error=False)
    assert attempted > 0 and failed == 0
