"""Reading data files: the low-level access every reader shares (gzip, zip members, UTF-8, numbered lines,
CSV/TSV/JSON/JSONL/Parquet rows) and ``read_generic``, the reader of a user's own files.

Files ending in ``.gz`` are gunzipped; text must be UTF-8. Every error names the file and the line or row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset

from tokenization_recbase import ITEM_FIELDS
from training.corpus_schema import (
    CorpusError,
    corpus_error,
    domain_tables,
    grouped_by_user,
    item_row,
    parse_categories,
    parse_timestamp,
    required_id,
    text_field,
)


def data_file(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.gz`` when only the compressed copy exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {folder / name} nor {folder / name}.gz exists")


def _read_text(path: Path) -> str:
    """The file's text (gunzipped when the name ends in ``.gz``), decoded as strict UTF-8."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise corpus_error(path, "line 1", f"not a valid gzip file ({err})") from None
    return _decode(raw, path)


def _decode(raw: bytes, path: Path) -> str:
    """``raw`` decoded as strict UTF-8; an error names ``path`` and the line."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark (Excel's "CSV UTF-8") is no text
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise corpus_error(path, f"line {line}", f"not valid UTF-8: {raw[err.start : err.end]!r}") from None


def zip_texts(path: Path, names: Iterable[str]) -> dict[str, str]:
    """The UTF-8 text of each member ``name`` of the zip file ``path``, keyed by name.

    Errors name the member as ``path/name`` (the zip file's path followed by the member's name).
    """
    texts = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in names:
                try:
                    raw = archive.read(name)
                except KeyError:
                    held = archive.namelist()
                    raise CorpusError(f"{path}: the zip file has no member {name!r}, only {held}") from None
                texts[name] = _decode(raw, path / name)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise CorpusError(f"{path}: not a valid zip file ({err})") from None
    return texts


def read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        near = err.doc[err.pos : err.pos + 40]
        raise corpus_error(path, f"line {err.lineno}", f"bad JSON ({err.msg}) at {near!r}") from None


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for each non-blank line."""
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.strip():
            yield number, line.rstrip("\r")


def table_rows(
    path: Path, delimiter: str, required: Iterable[str], text: str | None = None
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: value}) for each row of a delimited text file with a header.

    Values may be CSV-quoted (quotes doubled inside). Header names may carry a RecBole type
    suffix (``item_id:token``), which is dropped. The line number is where the row ends.
    ``text`` is the file's content when it is not read from ``path`` itself (a zip member);
    ``path`` then only names it in errors.
    """
    if text is None:
        text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise corpus_error(path, "line 1", "empty file, expected a header row")
        names = [field.split(":", 1)[0] for field in header]
        missing = [name for name in required if name not in names]
        if missing:
            raise corpus_error(path, "line 1", f"header lacks columns {missing}: {header!r}")
        for row in reader:
            if not row:
                continue
            if len(row) != len(names):
                raise corpus_error(
                    path,
                    f"line {reader.line_num}",
                    f"expected {len(names)} fields, got {len(row)}: {row!r}",
                )
            yield reader.line_num, dict(zip(names, row))
    except csv.Error as err:
        raise corpus_error(path, f"line {reader.line_num}", f"bad CSV quoting ({err})") from None


DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}


def header_delimiter(path: Path, text: str) -> str:
    """The delimiter of a delimited file: the one of ``DELIMITERS`` its header line holds most of (a comma when it
    holds none, a one-column file)."""
    header = text.split("\n", 1)[0]
    counts = {delimiter: header.count(delimiter) for delimiter in DELIMITERS}
    delimiter = max(counts, key=counts.get)
    if counts[delimiter] == 0:
        return ","
    tied = [DELIMITERS[d] for d, count in counts.items() if count == counts[delimiter]]
    if len(tied) > 1:
        raise corpus_error(path, "line 1", f"the header is ambiguous: as many {' and '.join(tied)} delimiters")
    return delimiter


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, record) for each row of a JSONL, CSV or Parquet file (chosen by suffix)."""
    compressed = path.suffix == ".gz"
    kind = Path(path.stem).suffix if compressed else path.suffix
    if kind == ".jsonl":
        for number, line in numbered_lines(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise corpus_error(path, f"line {number}", f"bad JSON ({err.msg}): {line!r}") from None
            if not isinstance(record, dict):
                raise corpus_error(path, f"line {number}", f"expected a JSON object, got {line!r}")
            yield f"line {number}", record
    elif kind in (".csv", ".tsv"):
        text = _read_text(path)
        for number, row in table_rows(path, header_delimiter(path, text), required=(), text=text):
            yield f"line {number}", row
    elif kind == ".parquet" and not compressed:
        for number, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"row {number}", record
    else:
        raise CorpusError(f"{path}: unsupported file type, expected .jsonl, .csv, .tsv or .parquet")


def read_generic(
    interactions_path: str | Path, items_path: str | Path, domain: str, item_type: str = "item"
) -> tuple[Dataset, Dataset]:
    """Read a user's own files: JSONL, CSV or Parquet (``.jsonl``/``.csv`` may be gzipped).

    Items need ``item_id`` (without "/") plus any of title, categories (a list, or a string split on "|" or
    ","), brand, description, year, price; a catalogue without any text is refused. Interactions need ``user_id``
    and ``item_id``; ``timestamp`` (an integer, or an ISO-8601 date and time) is optional but, if one row has it,
    every row must. Without it, rows are in time order and the timestamp is the position in the user's sequence.
    Each user's events are stably sorted by timestamp. CSV files may be comma-, semicolon- or tab-separated (the
    header tells) and start with a byte-order mark.
    """
    items_path, interactions_path = Path(items_path), Path(interactions_path)
    items = []
    known_items: set[str] = set()
    first_record_fields: set[str] = set()
    for where, record in _records(items_path):
        item_id = own_item_id(record, items_path, where)
        if item_id in known_items:
            raise corpus_error(items_path, where, f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        first_record_fields = first_record_fields or set(record)
        text = {
            field: text_field(record.get(field), items_path, where, field)
            for field in ITEM_FIELDS
            if field != "categories"
        }
        categories = parse_categories(record.get("categories"), items_path, where)
        items.append(item_row(domain, item_type, item_id, categories=categories, **text))
    if items and not any(item[field] for item in items for field in ITEM_FIELDS):
        raise CorpusError(
            f"{items_path}: no item has any text ({', '.join(ITEM_FIELDS)}); RecBase recommends from item text: "
            f"columns found: {sorted(first_record_fields)}"
        )
    events = []
    positions: dict[str, int] = {}
    has_timestamps: bool | None = None
    for where, record in _records(interactions_path):
        user_id = required_id(record, "user_id", interactions_path, where)
        item_id = own_item_id(record, interactions_path, where)
        if item_id not in known_items:
            raise corpus_error(interactions_path, where, f"item {item_id!r} is not in {items_path.name}")
        raw_timestamp = record.get("timestamp")
        row_has_timestamp = raw_timestamp not in (None, "")
        if has_timestamps is None:
            has_timestamps = row_has_timestamp
        elif row_has_timestamp != has_timestamps:
            raise corpus_error(
                interactions_path,
                where,
                f"timestamp {raw_timestamp!r}: some rows have a timestamp and some do not",
            )
        if has_timestamps:
            timestamp = parse_timestamp(raw_timestamp, interactions_path, where)
        else:
            timestamp = positions.get(user_id, 0)
            positions[user_id] = timestamp + 1
        events.append((user_id, item_id, timestamp))
    return domain_tables(items, domain, grouped_by_user(events), interactions_path)


def own_item_id(record: dict[str, Any], path: Path, where: str) -> str:
    """``record``'s item id; one with "/" is refused (a key is "<domain>/<item_id>", read up to its first "/")."""
    item_id = required_id(record, "item_id", path, where)
    if "/" in item_id:
        raise corpus_error(path, where, f"item id {item_id!r} contains '/', which item ids may not hold")
    return item_id
