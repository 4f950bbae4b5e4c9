#!/usr/bin/env python3
"""The shape of src/: no import cycle between files, no file over 500 lines
before its tests, no function over 80 lines. Exits 1 with a list of what
breaks a rule, 0 when none does.

    python3 .ci/structure.py [--exclude src/pipeline ...] [--graph]

--exclude drops the files under a folder from the checks: their imports are
still read, and a cycle is reported when any file on it is checked.
--graph prints every file's imports and stops.

What counts as an import of a file, resolved to the file that defines the
module the path names (the longest prefix of the path that is a module):
- every path of a `use` declaration that starts with `crate::`, `super::`,
  `self::` or the name of a child module (`use child::Item`), group braces
  expanded, `pub use` included;
- every such path written inline in code (`crate::ops::jobs::show(..)`,
  `super::Flow`, `child::run(..)`); `$crate::` in macros is not one.
Tests modules count like any code. A file naming itself (a test module's
`use super::*`) is no import. `mod child;` declares, it does not import.

Limits, known and accepted for this code base:
- Source is read by a small lexer that blanks comments (nested block ones
  too), strings, raw strings, byte strings and char literals, telling
  `'a'` from a lifetime `'a` by the closing quote. Braces inside macro
  bodies (maud's `html!`) are counted like code: they balance there.
- `#[path]` attributes, `include!` and macro-generated modules or items are
  not followed (src/ has none); `main.rs` is its own crate and is skipped.
- A lowercase local name that is also a child module's name, followed by
  `::`, is read as that module.
- A function's length runs from the line of its `fn` keyword to the line of
  its closing brace (its attributes and doc comments not counted); a `fn`
  without a body (a trait's declaration) or a `fn(..)` pointer type is no
  function. Closures are not functions.
- "Before its tests" is the line of the first `#[cfg(test)]` followed by a
  `mod` (other attributes between allowed); a file without one is counted
  whole.
- Comments, doc comments included, are not code: an intra-doc link is no
  import. `pub(in crate::x)` reads as an import of `x`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_LINES = 500
MAX_FN_LINES = 80


def blank(source: str) -> str:
    """The source with comments, strings and char literals replaced by
    spaces, newlines kept, so offsets and line numbers stay the same."""
    out = list(source)
    n = len(source)
    i = 0

    def wipe(start: int, end: int) -> None:
        for k in range(start, min(end, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = source[i]
        nxt = source[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            end = source.find("\n", i)
            end = n if end < 0 else end
            wipe(i, end)
            i = end
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if source.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif source.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif (raw := re.compile(r'b?r(#*)"').match(source, i)) and not _ident_before(source, i):
            closing = '"' + raw.group(1)
            end = source.find(closing, raw.end())
            end = n if end < 0 else end + len(closing)
            wipe(i, end)
            i = end
        elif c == '"' or (c == "b" and nxt == '"' and not _ident_before(source, i)):
            j = i + (2 if c == "b" else 1)
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif c == "'" or (c == "b" and nxt == "'" and not _ident_before(source, i)):
            q = i + (1 if c == "b" else 0)
            char = re.compile(r"'(\\(x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|.)|[^\\\n'])'")
            m = char.match(source, q)
            if m:
                wipe(i, m.end())
                i = m.end()
            else:  # a lifetime or a loop label
                i = q + 1
        else:
            i += 1
    return "".join(out)


def _ident_before(source: str, i: int) -> bool:
    return i > 0 and (source[i - 1].isalnum() or source[i - 1] == "_")


def matching_brace(text: str, open_at: int) -> int:
    """The offset of the brace closing the one at `open_at` (in blanked text)."""
    depth = 0
    for k in range(open_at, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(text) - 1


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@dataclass
class SourceFile:
    path: Path  # relative to the repository, e.g. src/ops/dlq.rs
    module: tuple[str, ...]  # ("crate", "ops", "dlq")
    text: str  # blanked
    # inline modules: (start, end, module path)
    inline: list[tuple[int, int, tuple[str, ...]]] = field(default_factory=list)


def module_of(rel: Path) -> tuple[str, ...] | None:
    parts = list(rel.with_suffix("").parts)[1:]  # drop "src"
    if parts == ["main"]:
        return None
    if parts == ["lib"]:
        return ("crate",)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return ("crate", *parts)


def load(repo: Path) -> dict[tuple[str, ...], SourceFile]:
    files: dict[tuple[str, ...], SourceFile] = {}
    for path in sorted((repo / "src").rglob("*.rs")):
        rel = path.relative_to(repo)
        module = module_of(rel)
        if module is None:
            continue
        text = blank(path.read_text(encoding="utf-8"))
        files[module] = SourceFile(rel, module, text)
    for f in files.values():
        find_inline_modules(f)
    return files


def find_inline_modules(f: SourceFile) -> None:
    found = []
    for m in re.finditer(r"\bmod\s+(\w+)\s*\{", f.text):
        start = m.end() - 1
        found.append((start, matching_brace(f.text, start), m.group(1)))
    # Each inline module's path is the file's plus those enclosing it.
    for start, end, _ in found:
        chain = [name for s, e, name in found if s <= start and end <= e]
        f.inline.append((start, end, (*f.module, *chain)))


def scope_at(f: SourceFile, offset: int) -> tuple[str, ...]:
    best = f.module
    for start, end, module in f.inline:
        if start <= offset <= end and len(module) > len(best):
            best = module
    return best


def children(files: dict[tuple[str, ...], SourceFile], module: tuple[str, ...]) -> set[str]:
    names = {m[-1] for m in files if len(m) == len(module) + 1 and m[:-1] == module}
    for f in files.values():
        for _, _, inline in f.inline:
            if len(inline) == len(module) + 1 and inline[:-1] == module:
                names.add(inline[-1])
    return names


def expand_use(tree: str) -> list[list[str]]:
    """`a::{b, c::{d, self}}` -> [[a, b], [a, c, d], [a, c]]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    return _expand(tree, [])


def _expand(tree: str, prefix: list[str]) -> list[list[str]]:
    tree = tree.strip(":")
    if not tree:
        return [prefix] if prefix else []
    brace = tree.find("{")
    if brace < 0:
        segs = [s for s in tree.split("::") if s]
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        if segs and segs[-1] == "*":
            segs = segs[:-1]
        return [prefix + segs]
    head = [s for s in tree[:brace].split("::") if s]
    body = tree[brace + 1 : tree.rfind("}")]
    out: list[list[str]] = []
    for part in split_top(body):
        out.extend(_expand(part, prefix + head))
    return out


def split_top(body: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def absolute(
    files: dict[tuple[str, ...], SourceFile], scope: tuple[str, ...], segs: list[str]
) -> tuple[str, ...] | None:
    """The path from the crate root that `segs`, written in `scope`, names;
    None when it names an external crate or a local item."""
    if not segs:
        return None
    if segs[0] == "crate":
        return tuple(segs)
    if segs[0] in ("self", "super"):
        base = list(scope)
        rest = list(segs)
        while rest and rest[0] in ("self", "super"):
            if rest.pop(0) == "super":
                base.pop()
        return (*base, *rest)
    if segs[0] in children(files, scope):
        return (*scope, *segs)
    return None


def defining_file(
    files: dict[tuple[str, ...], SourceFile], path: tuple[str, ...]
) -> SourceFile | None:
    for k in range(len(path), 0, -1):
        prefix = path[:k]
        if prefix in files:
            return files[prefix]
        for f in files.values():
            if any(inline == prefix for _, _, inline in f.inline):
                return f
    return None


@dataclass(frozen=True)
class Edge:
    source: Path
    target: Path
    line: int


USE = re.compile(r"\buse\s+([^;]+);")
INLINE = re.compile(r"(?<![\w$:])((?:[a-z_]\w*::)+)[A-Za-z_]\w*")


def imports(files: dict[tuple[str, ...], SourceFile], f: SourceFile) -> list[Edge]:
    edges: dict[Path, Edge] = {}

    def add(offset: int, segs: list[str]) -> None:
        scope = scope_at(f, offset)
        path = absolute(files, scope, segs)
        if path is None:
            return
        target = defining_file(files, path)
        if target is None or target.path == f.path:
            return
        edges.setdefault(target.path, Edge(f.path, target.path, line_of(f.text, offset)))

    used = []
    for m in USE.finditer(f.text):
        used.append((m.start(), m.end()))
        for segs in expand_use(m.group(1)):
            add(m.start(), segs)
    for m in INLINE.finditer(f.text):
        if any(s <= m.start() < e for s, e in used):
            continue
        segs = m.group(0).split("::")
        add(m.start(), segs)
    return sorted(edges.values(), key=lambda e: str(e.target))


def components(graph: dict[Path, list[Edge]]) -> list[list[Path]]:
    """The strongly connected components of two files or more (Tarjan's)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found: list[list[Path]] = []

    def visit(node: Path) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def cycles(graph: dict[Path, list[Edge]]) -> list[list[Edge]]:
    """For each import that lies on a cycle, the shortest cycle through it;
    each cycle once. Every import to cut shows up in at least one of them,
    without listing the (many more) longer cycles."""
    found: dict[frozenset[Edge], list[Edge]] = {}
    for members in components(graph):
        inside = set(members)
        for first in (e for m in members for e in graph[m] if e.target in inside):
            path = shortest_path(graph, inside, first.target, first.source)
            cycle = [first, *path]
            found.setdefault(frozenset(cycle), rotate(cycle))
    return sorted(found.values(), key=lambda c: (len(c), [str(e.source) for e in c]))


def shortest_path(
    graph: dict[Path, list[Edge]], inside: set[Path], start: Path, goal: Path
) -> list[Edge]:
    if start == goal:
        return []
    came: dict[Path, Edge] = {}
    frontier, seen = [start], {start}
    while frontier:
        nxt = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target in inside and edge.target not in seen:
                    seen.add(edge.target)
                    came[edge.target] = edge
                    nxt.append(edge.target)
        if goal in seen:
            break
        frontier = nxt
    path, node = [], goal
    while node != start:
        path.append(came[node])
        node = came[node].source
    return path[::-1]


def rotate(cycle: list[Edge]) -> list[Edge]:
    """The cycle starting at its first file in name order."""
    k = min(range(len(cycle)), key=lambda i: str(cycle[i].source))
    return cycle[k:] + cycle[:k]


def long_functions(f: SourceFile) -> list[tuple[int, str, int]]:
    out = []
    for m in re.finditer(r"\bfn\s+([A-Za-z_]\w*)", f.text):
        # The body opens at the first `{` after the signature; a `;` first
        # means a declaration without one.
        k = m.end()
        depth = 0
        while k < len(f.text):
            ch = f.text[k]
            if ch in "([<":
                depth += 1
            elif ch in ")]>" and not (ch == ">" and f.text[k - 1] == "-"):
                depth -= 1
            elif ch == ";" and depth <= 0:
                k = -1
                break
            elif ch == "{" and depth <= 0:
                break
            k += 1
        if k < 0 or k >= len(f.text):
            continue
        first, last = line_of(f.text, m.start()), line_of(f.text, matching_brace(f.text, k))
        if last - first + 1 > MAX_FN_LINES:
            out.append((first, m.group(1), last - first + 1))
    return out


def lines_before_tests(f: SourceFile) -> int:
    m = re.search(r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*(pub(\([^)]*\))?\s+)?mod\b", f.text)
    end = m.start() if m else len(f.text.rstrip("\n"))
    return line_of(f.text, end) - (1 if m else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="DIR",
        help="leave the files under DIR (e.g. src/pipeline) unchecked; repeatable",
    )
    parser.add_argument("--graph", action="store_true", help="print each file's imports")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    files = load(repo)
    excluded = [excluded_dir(repo, e) for e in args.exclude]
    for e in excluded:
        if not any(e in f.path.parents for f in files.values()):
            print(f"structure: --exclude {e}: no file of src/ is under it", file=sys.stderr)
            return 2

    def checked(path: Path) -> bool:
        return not any(e in path.parents for e in excluded)

    graph = {f.path: imports(files, f) for f in files.values()}
    if args.graph:
        for path, edges in sorted(graph.items()):
            print(path)
            for e in edges:
                print(f"    line {e.line}: {e.target}")
        return 0

    problems: list[str] = []
    for cycle in cycles(graph):
        if not any(checked(e.source) for e in cycle):
            continue
        steps = " -> ".join(f"{e.source}:{e.line}" for e in cycle)
        problems.append(f"import cycle: {steps} -> {cycle[0].source}")
    for f in sorted(files.values(), key=lambda f: f.path):
        if not checked(f.path):
            continue
        n = lines_before_tests(f)
        if n > MAX_FILE_LINES:
            problems.append(f"{f.path}: {n} lines before its tests (at most {MAX_FILE_LINES})")
        for line, name, length in long_functions(f):
            problems.append(
                f"{f.path}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES})"
            )

    unchecked = sum(not checked(f.path) for f in files.values())
    scope = f"{len(files) - unchecked} files of src/ checked"
    if unchecked:
        scope += f" ({unchecked} under {', '.join(map(str, excluded))} not)"
    if problems:
        print(f"structure: {len(problems)} problem(s); {scope}", file=sys.stderr)
        print(
            "  (a cycle is given as file:line of each import on it, the shortest through"
            " each import that lies on one; cutting one import of each breaks them all)",
            file=sys.stderr,
        )
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(
        f"structure: ok, {scope}: no import cycle, no file over {MAX_FILE_LINES} lines"
        f" before its tests, no function over {MAX_FN_LINES} lines"
    )
    return 0


def excluded_dir(repo: Path, given: str) -> Path:
    """A folder given on the command line, relative to the repository."""
    path = Path(given)
    if path.is_absolute():
        path = path.resolve().relative_to(repo)
    return path


if __name__ == "__main__":
    sys.exit(main())
