"""Helpers shared by the corpus tests: bundled data, small files written on the fly, error messages."""

import functools
import gzip
import zipfile
from pathlib import Path

import pytest
from datasets import Dataset

from training.bundled_domains import BUNDLED_DOMAINS, DEFAULT_DATA_DIR, read_domain


def readme_counts() -> dict[str, tuple[int, int, int]]:
    """(users, items, interactions) per folder, from the table in data/README.md."""
    counts = {}
    for line in (DEFAULT_DATA_DIR / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in BUNDLED_DOMAINS and len(cells) > 4 and cells[2].isdigit():
            counts[cells[0]] = (int(cells[2]), int(cells[3]), int(cells[4]))
    return counts


@functools.cache
def bundled(name: str) -> tuple[Dataset, Dataset]:
    """Each bundled domain is read once per test session."""
    return read_domain(name)


def items_by_id(items: Dataset) -> dict[str, dict]:
    return {row["item_id"]: row for row in items}


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def write_zip(path: Path, members: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def assert_message(error: pytest.ExceptionInfo, path: Path, *parts: str) -> None:
    message = str(error.value)
    assert str(path) in message, message
    for part in parts:
        assert part in message, message


# ---------------------------------------------------------------------------------------------
# Bundled data
