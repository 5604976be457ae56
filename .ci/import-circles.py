#!/usr/bin/env python3
"""Find file-import circles inside Rust crates.

Usage:
    .ci/import-circles.py [--edges] CRATE/src [CRATE/src ...]
    .ci/import-circles.py --self-test

For every crate root in each directory (`lib.rs`, `main.rs`) the module
tree is read from its `mod NAME;` declarations. A file A has an edge to a
file B when A's code names a path `crate::...` or `super::...` (brace groups
of `use` expanded) whose deepest existing module is B's. Not edges:

* structure: a parent module naming its own child modules, and
  re-exports (`pub use`, `pub(crate) use`, ...) in any file;
* test code: `#[cfg(test)]` items (the `mod tests { ... }` tail of a file),
  modules whose name starts with `tests`, and everything under `src/bin/`;
* comments, string literals and `$crate::` paths inside macro definitions.

Every strongly connected component of two or more files is printed as
`circle: a.rs, b.rs`, followed by the edges that close it (indented), and
the exit status is 1; otherwise the script prints nothing and exits 0.
With --edges it first prints every edge (`a.rs -> b.rs`), a picture of the
imports to read top-down.
"""

import os
import re
import sys
import tempfile

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


# ---------------------------------------------------------------- lexing


def strip_comments_and_strings(text):
    """Blanks comments, string and char literals, keeping newlines (so
    offsets and line numbers stay put)."""
    out = []
    i, n = 0, len(text)

    def blank(s):
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif c in "rb" and re.match(r"(?:br|r)#*\"", text[i:i + 300]) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            m = re.match(r"(?:br|r)(#*)\"", text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(blank(text[i:j]))
            i = j
        elif c == '"' or (c == "b" and text.startswith('b"', i)):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(blank(text[i:j]))
            i = j
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            m = re.match(r"'(?:\\u\{[0-9A-Fa-f]+\}|\\.|[^\\'])'", text[i:i + 16])
            if m:
                out.append(blank(m.group(0)))
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    """Index just past the `}` matching the `{` at `open_at`."""
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


TEST_CFG = re.compile(r"#\s*\[\s*cfg\s*\(([^\]]*)\)\s*\]")
ATTRS_AFTER = re.compile(r"(?:\s*#\s*!?\s*\[[^\]]*\])*\s*")


def is_test_cfg(cond):
    """Whether a `cfg(...)` condition holds only in test builds."""
    cond = re.sub(r"\bnot\s*\([^()]*\)", "", cond)
    return re.search(r"\btest\b", cond) is not None


def strip_test_items(text):
    """Blanks every item under a `#[cfg(test)]`-like attribute (a module,
    function or `use`): test code is not part of the import structure."""
    while True:
        for m in TEST_CFG.finditer(text):
            if not is_test_cfg(m.group(1)):
                continue
            start = m.start()
            j = ATTRS_AFTER.match(text, m.end()).end()
            brace, semi = text.find("{", j), text.find(";", j)
            if semi >= 0 and (brace < 0 or semi < brace):
                end = semi + 1
            elif brace >= 0:
                end = matching_brace(text, brace)
            else:
                end = len(text)
            blanked = "".join("\n" if ch == "\n" else " " for ch in text[start:end])
            text = text[:start] + blanked + text[end:]
            break
        else:
            return text


# ---------------------------------------------------------- module tree


def is_test_module(name):
    return name.startswith("tests")


MOD_DECL = re.compile(r"(?<![\w$])mod\s+(" + IDENT + r")\s*;")
INLINE_MOD = re.compile(r"(?<![\w$])mod\s+(" + IDENT + r")\s*\{")


def child_file(parent_file, name):
    base = os.path.basename(parent_file)
    d = os.path.dirname(parent_file)
    if base not in ("mod.rs", "lib.rs", "main.rs"):
        d = os.path.join(d, base[:-3])
    for cand in (os.path.join(d, name + ".rs"), os.path.join(d, name, "mod.rs")):
        if os.path.isfile(cand):
            return cand
    return None


def read_clean(path):
    with open(path, encoding="utf-8") as f:
        return strip_test_items(strip_comments_and_strings(f.read()))


def module_tree(root_file):
    """{module path tuple: file} for one crate root, following `mod x;`."""
    modules = {(): root_file}
    todo = [((), root_file)]
    while todo:
        path, f = todo.pop()
        for m in MOD_DECL.finditer(read_clean(f)):
            name = m.group(1)
            if is_test_module(name):
                continue
            cf = child_file(f, name)
            if cf is not None and (path + (name,)) not in modules:
                modules[path + (name,)] = cf
                todo.append((path + (name,), cf))
    return modules


# ---------------------------------------------------------------- paths


def split_top(s, sep=","):
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "{(<":
            depth += 1
        elif ch in "})>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_use_tree(tree):
    """`a::{b::C, d::{self, E}}` -> [[a,b,C], [a,d], [a,d,E]]."""
    tree = re.sub(r"\s+as\s+" + IDENT + r"\s*$", "", tree.strip())
    if "{" in tree:
        head, rest = tree.split("{", 1)
        inner = rest[: rest.rfind("}")]
        prefix = [s for s in head.replace(" ", "").split("::") if s]
        result = []
        for part in split_top(inner):
            for tail in expand_use_tree(part):
                result.append(prefix + tail)
        return result
    segs = [s for s in tree.replace(" ", "").split("::") if s]
    if segs and segs[-1] == "self":
        segs = segs[:-1]
    return [segs]


PATH_START = re.compile(r"(?<![\w$:])(crate|super)\s*::")
PATH_BODY = re.compile(r"(?:\s*::\s*(?:" + IDENT + r"|\*))*")
USE_STMT = re.compile(
    r"(?<![\w$])(pub\s*(?:\([^)]*\))?\s*)?use\s+([^;]*);", re.S
)
VISIBILITY_IN = re.compile(r"pub\s*\(\s*in\s+[^)]*\)")


def references(text):
    """Yields (offset, segments) for every crate::/super:: path in `text`,
    re-exports (`pub use`) excluded."""
    text = VISIBILITY_IN.sub(lambda m: " " * len(m.group(0)), text)
    spans = []
    for m in USE_STMT.finditer(text):
        spans.append((m.start(), m.end()))
        if m.group(1):  # a re-export: structure, not an edge
            continue
        tree = m.group(2).strip()
        if not re.match(r"(?:::\s*)?(crate|super)\b", tree):
            continue
        for segs in expand_use_tree(tree):
            yield m.start(), segs
    for m in PATH_START.finditer(text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        body = PATH_BODY.match(text, m.end() - 2)
        segs = [m.group(1)] + [
            s for s in re.split(r"\s*::\s*", body.group(0)) if s
        ]
        yield m.start(), segs


def inline_modules(text):
    """[(start, end, name)] of inline `mod name { ... }` blocks."""
    return [
        (m.start(), matching_brace(text, m.end() - 1), m.group(1))
        for m in INLINE_MOD.finditer(text)
    ]


def resolve(segs, here, modules):
    """Absolute module path of the file a path refers to, or None."""
    if not segs:
        return None
    if segs[0] == "crate":
        cur, rest = [], segs[1:]
    else:
        cur, rest = list(here), segs
        while rest and rest[0] == "super":
            if not cur:
                return None
            cur.pop()
            rest = rest[1:]
        if rest and rest[0] == "self":
            rest = rest[1:]
    full = cur + [s for s in rest if s != "*"]
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in modules:
            return tuple(full[:k])
    return None


# ---------------------------------------------------------------- graph


def graph_of(src_dir):
    """{file: {target file: [(line, path text)]}} over all crate roots."""
    edges = {}
    for root in ("lib.rs", "main.rs"):
        root_file = os.path.join(src_dir, root)
        if not os.path.isfile(root_file):
            continue
        modules = module_tree(root_file)
        files = {f: p for p, f in modules.items()}
        for f, modpath in files.items():
            text = read_clean(f)
            inline = inline_modules(text)
            out = edges.setdefault(f, {})
            for off, segs in references(text):
                here = list(modpath) + [
                    name for (a, b, name) in sorted(inline) if a <= off < b
                ]
                target = resolve(segs, here, modules)
                if target is None:
                    continue
                tf = modules[target]
                if tf == f:
                    continue
                if target[:-1] == modpath and len(target) == len(modpath) + 1:
                    continue  # a parent naming its own child: structure
                line = text.count("\n", 0, off) + 1
                out.setdefault(tf, []).append((line, "::".join(segs)))
    return edges


def circles(edges):
    """Strongly connected components of 2+ nodes (Tarjan, iterative)."""
    index, low, on, stack, comps = {}, {}, set(), [], []
    counter = [0]
    nodes = set(edges)
    for targets in edges.values():
        nodes.update(targets)
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            pushed = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                    pushed = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if pushed:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return sorted(comps)


def check(src_dirs, out=sys.stdout, show_edges=False):
    found = 0
    for src in src_dirs:
        edges = graph_of(src)
        if show_edges:
            for a in sorted(edges):
                for b in sorted(edges[a]):
                    print(f"{a} -> {b}", file=out)
        for comp in circles(edges):
            found += 1
            print("circle: " + ", ".join(comp), file=out)
            members = set(comp)
            for a in comp:
                for b, refs in sorted(edges.get(a, {}).items()):
                    if b in members:
                        where = ", ".join(
                            f"{p} (line {line})" for line, p in refs[:3]
                        )
                        more = f" and {len(refs) - 3} more" if len(refs) > 3 else ""
                        print(f"    {a} -> {b}: {where}{more}", file=out)
    return found


# ------------------------------------------------------------ self-test


SELF_TEST_TREE = {
    # A two-file circle through a brace group and an expression path.
    "two/src/lib.rs": "mod a;\nmod b;\nmod c;\n",
    "two/src/a.rs": "use crate::{b::B, c::C};\npub struct A;\n",
    "two/src/b.rs": "pub struct B;\nfn f() { let _ = crate::a::A; }\n",
    "two/src/c.rs": "pub struct C;\n",
    # A three-file circle through super:: and a nested module.
    "three/src/lib.rs": "pub mod x;\nmod y;\n",
    "three/src/x/mod.rs": "mod p;\nmod q;\n",
    "three/src/x/p.rs": "use super::q::Q;\npub struct P;\n",
    "three/src/x/q.rs": "use crate::y::Y;\npub struct Q;\n",
    "three/src/y.rs": "pub struct Y(crate::x::p::P);\n",
    # Nothing here is a circle.
    "clean/src/lib.rs": (
        "mod a;\nmod b;\nmod d;\npub use crate::a::A;\n"
        "#[cfg(test)]\nmod tests;\n"
    ),
    # A parent naming its child, and the child its parent.
    "clean/src/d/mod.rs": "mod e;\nuse crate::d::e::E;\npub struct D;\n",
    "clean/src/d/e.rs": "use super::D;\npub struct E;\n",
    # Test code, comments, strings, macros and visibilities are not edges.
    "clean/src/a.rs": (
        "use crate::b::B;\n"
        "pub(crate) struct A;\n"
        "pub(in crate::b) fn g() {}\n"
        "#[macro_export]\nmacro_rules! m { () => { $crate::a::A } }\n"
    ),
    "clean/src/b.rs": (
        "pub struct B;\n"
        "// crate::a::A in a comment\n"
        "/* crate::a::A /* nested */ crate::a::A */\n"
        "const S: &str = \"crate::a::A\";\n"
        "const R: &str = r#\"crate::a::A\"#;\n"
        "fn life<'a>(x: &'a str) -> char { let _ = x; '\"' }\n"
        "#[cfg(test)]\nmod tests {\n    use crate::a::A;\n    #[test]\n    fn t() {}\n}\n"
        "#[cfg(test)]\nuse crate::a::A;\n"
    ),
    "clean/src/tests.rs": "use crate::a::A;\nuse crate::b::B;\n",
    "clean/src/bin/tool.rs": "use crate::a::A;\n",
    # A re-export from a sibling is structure too.
    "reexport/src/lib.rs": "mod a;\nmod b;\n",
    "reexport/src/a.rs": "pub use crate::b::B;\npub struct A;\n",
    "reexport/src/b.rs": "pub struct B(crate::a::A);\n",
    # The deepest existing module: crate::m::n::Z has no m/n.rs, so it is m.rs.
    "deep/src/lib.rs": "mod m;\nmod k;\n",
    "deep/src/m.rs": "pub mod n { pub struct Z; }\nuse crate::k::K;\n",
    "deep/src/k.rs": "pub struct K;\nfn f() -> crate::m::n::Z { crate::m::n::Z }\n",
}


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        for rel, body in SELF_TEST_TREE.items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(body)

        def comps(crate):
            src = os.path.join(tmp, crate, "src")
            return [[os.path.relpath(f, src) for f in c] for c in circles(graph_of(src))]

        failures = []

        def expect(crate, want):
            got = comps(crate)
            if got != want:
                failures.append(f"{crate}: expected {want}, got {got}")

        expect("two", [["a.rs", "b.rs"]])
        expect("three", [["x/p.rs", "x/q.rs", "y.rs"]])
        expect("clean", [])
        expect("reexport", [])
        expect("deep", [["k.rs", "m.rs"]])

        class Sink:
            def __init__(self):
                self.text = ""

            def write(self, s):
                self.text += s

        sink = Sink()
        n = check([os.path.join(tmp, "two", "src")], out=sink)
        if n != 1 or not sink.text.startswith("circle: "):
            failures.append(f"check() reported {n}: {sink.text!r}")

    for f in failures:
        print("self-test FAILED: " + f, file=sys.stderr)
    if not failures:
        print("self-test passed (5 trees)")
    return 1 if failures else 0


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    show_edges = bool(argv) and argv[0] == "--edges"
    if show_edges:
        argv = argv[1:]
    if not argv or any(a.startswith("-") for a in argv):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for d in argv:
        if not os.path.isdir(d):
            print(f"not a directory: {d}", file=sys.stderr)
            return 2
    return 1 if check(argv, show_edges=show_edges) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
