#!/usr/bin/env python3
"""Collects every job body the repository shows, for .ci/schema.sh to check
against schema/job.schema.json.

    python3 .ci/extract_jobs.py OUT_DIR

Writes one JSON file per job into OUT_DIR/valid/ (jobs that must pass) or
OUT_DIR/invalid/ (jobs that must be refused), and prints where each came from.

- README.md: every ```json (or ```jsonl) fenced block. A block is one JSON
  document, or else one document per non-empty line. A document that is an
  object with a top-level "MsgBody" is a job; other blocks (receipts, a lone
  element) are skipped. A block that mentions "MsgBody" but does not parse
  is an error: a README example must be valid JSON.
- Fixtures: every .json, .jsonl or .ndjson file under tests/ and testkit/
  that mentions "MsgBody", read the same way (a top-level array is a list of
  documents). A fixture whose path contains "invalid" holds jobs the worker
  refuses: they go to invalid/. JSON built inside Rust code is not read.

Exits 1 on an unreadable block or fixture, 0 otherwise.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

FENCE = re.compile(r"^(\s*)```\s*(\S*)\s*$")
JSON_TAGS = {"json", "jsonl", "ndjson"}
FIXTURE_DIRS = ("tests", "testkit")
FIXTURE_SUFFIXES = {".json", ".jsonl", ".ndjson"}


Doc = tuple[int, object, str]  # line, parsed, text as written


def documents(text: str, first_line: int) -> list[Doc]:
    """The block's documents with their line numbers: the whole text as one,
    or else each non-empty line. Raises ValueError naming the bad line."""
    try:
        return [(first_line, json.loads(text), text)]
    except json.JSONDecodeError:
        pass
    docs = []
    for offset, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            docs.append((first_line + offset, json.loads(line), line))
        except json.JSONDecodeError as e:
            raise ValueError(f"line {first_line + offset}: not JSON: {e}") from None
    return docs


def jobs_of(docs: list[Doc]) -> list[tuple[int, str]]:
    """The jobs among the documents, as written (an array's items re-encoded)."""
    out = []
    for line, doc, text in docs:
        if isinstance(doc, list):
            out += [(line, json.dumps(d, ensure_ascii=False)) for d in doc if is_job(d)]
        elif is_job(doc):
            out.append((line, text))
    return out


def is_job(doc: object) -> bool:
    return isinstance(doc, dict) and "MsgBody" in doc


def readme_blocks(path: Path) -> list[tuple[int, str]]:
    """(first line of content, text) of each ```json block."""
    blocks, inside, start, lines = [], False, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if not inside and fence and fence.group(2).lower() in JSON_TAGS:
            inside, start, lines = True, number + 1, []
        elif inside and fence and not fence.group(2):
            blocks.append((start, "\n".join(lines)))
            inside = False
        elif inside:
            lines.append(line)
    return blocks


def main() -> int:
    out = Path(sys.argv[1])
    root = Path(__file__).resolve().parent.parent
    for sub in ("valid", "invalid"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    errors, written = [], 0

    def write(kind: str, source: str, line: int, job: str) -> None:
        nonlocal written
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{source}-L{line}-{written}") + ".json"
        (out / kind / name).write_text(job.strip() + "\n", encoding="utf-8")
        written += 1
        print(f"  {kind:7} {source}:{line}")

    readme = root / "README.md"
    blocks = readme_blocks(readme)
    print(f"README.md: {len(blocks)} json blocks")
    for start, text in blocks:
        try:
            found = jobs_of(documents(text, start))
        except ValueError as e:
            if "MsgBody" in text:
                errors.append(f"README.md block at line {start}: {e}")
            continue
        for line, job in found:
            write("valid", "README.md", line, job)

    fixtures = sorted(
        p
        for d in FIXTURE_DIRS
        for p in (root / d).rglob("*")
        if p.is_file() and p.suffix in FIXTURE_SUFFIXES and "MsgBody" in p.read_text(errors="replace")
    )
    print(f"fixtures under {', '.join(d + '/' for d in FIXTURE_DIRS)}: {len(fixtures)} files mentioning MsgBody")
    for path in fixtures:
        source = str(path.relative_to(root))
        kind = "invalid" if "invalid" in source.lower() else "valid"
        try:
            found = jobs_of(documents(path.read_text(encoding="utf-8"), 1))
        except ValueError as e:
            errors.append(f"{source}: {e}")
            continue
        for line, job in found:
            write(kind, source, line, job)

    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{written} job bodies extracted")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
