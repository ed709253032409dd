#!/usr/bin/env python3
"""Fails when two files of one crate import each other, directly or round a
longer loop: dependencies between a crate's files must run one way.

For every `src/` of the workspace it maps module paths to files, reads each
file's `use` items and inline `crate::`/`super::`/`self::` paths (comments,
`mod` items, `pub use` re-exports of a module's own children and
`#[cfg(test)]` modules left out: a facade re-exporting its children and tests
reaching into their parent are not dependencies), resolves each path to the
file of the longest module it names, and reports every strongly connected
component of more than one file.

    python3 hack/import-cycles.py            # the whole workspace
    python3 hack/import-cycles.py agent/src  # one crate
"""
import os
import re
import sys

ROOTS_DEFAULT = ["repo-format/src", "agent/src", "api/src", "controller/src",
                 "envtest/src", "tests/src", "fuzz/src"]


def module_files(src):
    """Module path (tuple) -> file, for a crate's src/ directory."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("lib", "main") and len(parts) == 1:
                parts = []
            elif parts[0] == "bin":
                continue
            elif parts[-1] == "mod":
                parts = parts[:-1]
            mods[tuple(parts)] = os.path.join(dirpath, f)
    return mods


def strip(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    # Drop #[cfg(test)] modules: from the attribute to the end of the
    # braced block that follows it.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, re.S)
    if not m:
        return [re.sub(r"\s+as\s+\w+$", "", tree)]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [p for part in parts if part.strip() for p in expand(prefix + part.strip())]


def resolve(path, here, mods):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    full = base + segs
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return None


def edges_of(mod, file, mods):
    text = strip(open(file, encoding="utf-8").read())
    deps = set()
    for m in re.finditer(r"(?m)^\s*(pub(\([^)]*\))?\s+)?use\s+([^;]+);", text):
        is_pub = bool(m.group(1))
        for p in expand(m.group(3)):
            target = resolve(p, mod, mods)
            if target is None or target == mod:
                continue
            # A facade re-exporting its own children is not a dependency.
            if is_pub and target[: len(mod)] == mod:
                continue
            deps.add(target)
    body = re.sub(r"(?m)^\s*(pub(\([^)]*\))?\s+)?use\s+[^;]+;", "", text)
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", body):
        target = resolve(m.group(1), mod, mods)
        if target is not None and target != mod:
            deps.add(target)
    return deps


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    roots = sys.argv[1:] or ROOTS_DEFAULT
    bad = 0
    for src in roots:
        mods = module_files(src)
        graph = {m: edges_of(m, f, mods) for m, f in mods.items()}
        for comp in sccs(graph):
            if len(comp) > 1:
                bad += 1
                names = sorted(os.path.relpath(mods[m]) for m in comp)
                print(f"import cycle in {src}: " + " <-> ".join(names))
                for m in sorted(comp):
                    inside = sorted(os.path.relpath(mods[d]) for d in graph[m] if d in comp)
                    print(f"    {os.path.relpath(mods[m])} uses {', '.join(inside)}")
    if bad:
        sys.exit(1)
    print(f"import-cycles: no cycle between the files of {len(roots)} crates")


main()
