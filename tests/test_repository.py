"""The repository stands on its own: a user who clones it has nothing beside it.

No tracked file may point outside the checkout (a sibling ``shared`` folder, a machine's
absolute working paths) or cite a Markdown document that is not in the repository, and
no tracked file is big enough to bloat every clone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_FILE_BYTES = 2 * 1024 * 1024

# Built from pieces so this file does not match itself.
OUTSIDE_REFERENCES = [
    re.compile(re.escape("..") + r"[/\\]" + "shared" + r"\b"),
    re.compile(re.escape("/work" + "/") + r"(shared|wt|main)\b"),
]
# A path-like mention of a Markdown document (a relative path or a bare file name).
MARKDOWN_REFERENCE = re.compile(r"(?<![\w./-])((?:\.{1,2}/)*[\w-]+(?:/[\w.-]+)*\.md)\b")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the repository checks need a git checkout: git ls-files failed ({exc})")
    return [f for f in out.split("\0") if f]


def tracked_text() -> dict[str, str]:
    text = {}
    for rel in tracked_files():
        path = REPO / rel
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (the gzip-compressed traces)
        text[rel] = data.decode("utf-8", errors="replace")
    return text


def test_no_tracked_file_refers_outside_the_repository():
    hits = [
        f"{rel}:{content.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for rel, content in tracked_text().items()
        for pattern in OUTSIDE_REFERENCES
        for m in pattern.finditer(content)
    ]
    assert not hits, "tracked files refer to paths outside the repository:\n" + "\n".join(hits)


def test_every_cited_markdown_document_exists_in_the_repository():
    files = tracked_files()
    suffixes = {f for f in files} | {"/" + f for f in files}
    missing = []
    for rel, content in tracked_text().items():
        here = (REPO / rel).parent
        for m in MARKDOWN_REFERENCE.finditer(content):
            ref = m.group(1)
            if (here / ref).is_file() or (REPO / ref).is_file():
                continue
            # A shortened path (`traces/README.md` for kubetier/sim/traces/README.md) is
            # fine when some tracked file ends with it.
            tail = "/" + ref.lstrip("./")
            if any(s.endswith(tail) for s in suffixes):
                continue
            missing.append(f"{rel}:{content.count(chr(10), 0, m.start()) + 1}: {ref}")
    assert not missing, "tracked files cite Markdown documents the repository does not have:\n" + "\n".join(missing)


def test_the_checks_catch_what_they_are_for():
    # The patterns must match the references they exist to catch (else the tests above
    # pass vacuously).
    sibling = "see " + ".." + "/shared/traces/README.md"
    assert any(p.search(sibling) for p in OUTSIDE_REFERENCES)
    assert MARKDOWN_REFERENCE.search("the code cites " + "design" + ".md here").group(1) == "design" + ".md"
    assert MARKDOWN_REFERENCE.search("[x](../../docs/install.md)").group(1) == "../../docs/install.md"


def test_no_tracked_file_is_over_two_megabytes():
    big = {
        rel: (REPO / rel).stat().st_size
        for rel in tracked_files()
        if (REPO / rel).is_file() and (REPO / rel).stat().st_size > MAX_FILE_BYTES
    }
    assert not big, f"tracked files over {MAX_FILE_BYTES} bytes: {big}"
