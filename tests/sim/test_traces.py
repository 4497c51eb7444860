"""The public traces shipped in the package: present, readable (plain and .gz), and the
shapes the README beside them states."""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

import pytest

from kubetier.sim.workload import (
    KNOWN_TRACES,
    PACKAGED_TRACES_DIR,
    TraceMissingError,
    read_trace,
    resolve_trace,
)

# (rows, mean prompt tokens, mean output tokens) as traces/README.md states them.
README_SHAPES = {
    "azure_llm_2023_code": (8_819, 2_048, 28),
    "azure_llm_2023_conv": (19_366, 1_155, 211),
    "mooncake_conversation": (12_031, 12_035, 343),
}
SPOT_FILES = ["availability_0203", "availability_0304", "availability_0506"]


@pytest.mark.parametrize("name", sorted(KNOWN_TRACES))
def test_every_known_trace_ships_compressed_and_matches_its_readme(name):
    path = resolve_trace(name, None)
    assert path.parent == PACKAGED_TRACES_DIR and path.name.endswith(".gz")
    rows = list(read_trace(path))
    want_rows, want_prompt, want_output = README_SHAPES[name]
    assert len(rows) == want_rows
    assert rows[0][0] == 0.0 and rows[-1][0] > 3_000  # about one hour, from zero
    assert statistics.mean(r[1] for r in rows) == pytest.approx(want_prompt, abs=1)
    assert statistics.mean(r[2] for r in rows) == pytest.approx(want_output, abs=1)
    readme = (PACKAGED_TRACES_DIR / "README.md").read_text()
    assert f"`{KNOWN_TRACES[name]}.gz`" in readme
    assert f"{want_rows:,}" in readme


@pytest.mark.parametrize("name", ["azure_llm_2023_code", "mooncake_conversation"])
def test_plain_and_gz_copies_read_the_same(tmp_path: Path, name):
    packaged = resolve_trace(name, None)
    head = b"".join(gzip.decompress(packaged.read_bytes()).splitlines(keepends=True)[:50])
    plain = tmp_path / KNOWN_TRACES[name]
    plain.write_bytes(head)
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / (plain.name + ".gz")).write_bytes(gzip.compress(head))
    from_plain = list(read_trace(resolve_trace(name, tmp_path)))
    from_gz = list(read_trace(resolve_trace(name, tmp_path / "gz")))
    assert resolve_trace(name, tmp_path) == plain  # the plain file wins where both could
    assert len(from_plain) >= 49 and from_plain == from_gz


def test_missing_trace_error_names_the_folder_and_the_files(tmp_path: Path):
    with pytest.raises(TraceMissingError) as exc:
        resolve_trace("azure_llm_2023_conv", tmp_path)
    assert str(tmp_path) in str(exc.value) and "azure_llm_2023_conv.csv" in str(exc.value)


@pytest.mark.parametrize("name", SPOT_FILES)
def test_spot_availability_traces_ship_and_parse(name):
    path = PACKAGED_TRACES_DIR / "spotserve" / f"{name}.jsonl.gz"
    events = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line.strip()]
    assert events[0][0] == 0 and events[0][1] == "add" and events[0][2]["nodes"]
    assert events[-1][1] == "DONE"
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert {e[1] for e in events} <= {"add", "remove", "DONE"}


def test_shipped_traces_stay_small():
    sizes = {p.name: p.stat().st_size for p in PACKAGED_TRACES_DIR.rglob("*.gz")}
    assert len(sizes) == len(KNOWN_TRACES) + len(SPOT_FILES)
    assert sum(sizes.values()) < 2_000_000, sizes
