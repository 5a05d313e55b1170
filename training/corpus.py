"""Read recommendation datasets into one schema held as Hugging Face `datasets` (Parquet on disk).

Every reader returns ``(items, interactions)``:

- items (``ITEM_FEATURES``): one row per item, keyed ``"<domain>/<item_id>"``, with its text fields
  (missing text is ``""`` or ``[]``);
- interactions (``INTERACTION_FEATURES``): one row per (user, item) event with an int64 timestamp;
  formats without time stamps use the position in the user's sequence (0, 1, 2, ...).

``to_sequences`` derives one time-ordered row of item keys per user, ``leave_one_out`` splits those
rows, and ``build_corpus`` / ``load_corpus`` write and read the Parquet files. Files ending in
``.gz`` are gunzipped (X-Wines is read from inside its zip file); text must be UTF-8. A file that
does not fit raises ``CorpusError``, whose message names the file, the line (or user, item or
row) and the offending value.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import gzip
import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, IterableDataset, List, Value

ITEM_FEATURES = Features(
    {
        "key": Value("string"),
        "domain": Value("string"),
        "item_id": Value("string"),
        "item_type": Value("string"),
        "title": Value("string"),
        "categories": List(Value("string")),
        "brand": Value("string"),
        "description": Value("string"),
        "year": Value("string"),
        "price": Value("string"),
    }
)
INTERACTION_FEATURES = Features(
    {
        "domain": Value("string"),
        "user_id": Value("string"),
        "item_id": Value("string"),
        "timestamp": Value("int64"),
    }
)
SEQUENCE_FEATURES = Features(
    {"domain": Value("string"), "user_id": Value("string"), "items": List(Value("string"))}
)
EVALUATION_FEATURES = Features(
    {
        "domain": Value("string"),
        "user_id": Value("string"),
        "history": List(Value("string")),
        "target": Value("string"),
    }
)
CORPUS_FEATURES = {"items": ITEM_FEATURES, "interactions": INTERACTION_FEATURES}

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"


class CorpusError(ValueError):
    """A data file that does not fit the corpus schema; the message says where and what."""


def _error(path: Path, where: str, problem: str) -> CorpusError:
    return CorpusError(f"{path}, {where}: {problem}")


def _dataset(columns: dict[str, list[Any]], features: Features) -> Dataset:
    """A Dataset built straight through Arrow (``Dataset.from_dict`` encodes value by value)."""
    return Dataset(pa.Table.from_pydict(columns, schema=features.arrow_schema))


def item_key(domain: str, item_id: str) -> str:
    """The corpus-wide key of an item: ``"<domain>/<item_id>"``."""
    return f"{domain}/{item_id}"


# ---------------------------------------------------------------------------------------------
# Low-level file access


def _data_file(folder: Path, name: str) -> Path:
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
            raise _error(path, "line 1", f"not a valid gzip file ({err})") from None
    return _decode(raw, path)


def _decode(raw: bytes, path: Path) -> str:
    """``raw`` decoded as strict UTF-8; an error names ``path`` and the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise _error(path, f"line {line}", f"not valid UTF-8: {raw[err.start:err.end]!r}") from None


def _zip_texts(path: Path, names: Iterable[str]) -> dict[str, str]:
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
                    raise CorpusError(
                        f"{path}: the zip file has no member {name!r}, only {held}"
                    ) from None
                texts[name] = _decode(raw, path / name)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise CorpusError(f"{path}: not a valid zip file ({err})") from None
    return texts


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        near = err.doc[err.pos : err.pos + 40]
        raise _error(path, f"line {err.lineno}", f"bad JSON ({err.msg}) at {near!r}") from None


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for each non-blank line."""
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.strip():
            yield number, line.rstrip("\r")


def _table_rows(
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
            raise _error(path, "line 1", "empty file, expected a header row")
        names = [field.split(":", 1)[0] for field in header]
        missing = [name for name in required if name not in names]
        if missing:
            raise _error(path, "line 1", f"header lacks columns {missing}: {header!r}")
        for row in reader:
            if not row:
                continue
            if len(row) != len(names):
                raise _error(
                    path,
                    f"line {reader.line_num}",
                    f"expected {len(names)} fields, got {len(row)}: {row!r}",
                )
            yield reader.line_num, dict(zip(names, row))
    except csv.Error as err:
        raise _error(path, f"line {reader.line_num}", f"bad CSV quoting ({err})") from None


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, record) for each row of a JSONL, CSV or Parquet file (chosen by suffix)."""
    compressed = path.suffix == ".gz"
    kind = Path(path.stem).suffix if compressed else path.suffix
    if kind == ".jsonl":
        for number, line in _numbered_lines(path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise _error(path, f"line {number}", f"bad JSON ({err.msg}): {line!r}") from None
            if not isinstance(record, dict):
                raise _error(path, f"line {number}", f"expected a JSON object, got {line!r}")
            yield f"line {number}", record
    elif kind == ".csv":
        for number, row in _table_rows(path, ",", required=()):
            yield f"line {number}", row
    elif kind == ".parquet" and not compressed:
        for number, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"row {number}", record
    else:
        raise CorpusError(f"{path}: unsupported file type, expected .jsonl, .csv or .parquet")


# ---------------------------------------------------------------------------------------------
# Field parsing


def _is_integer_id(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _integer_id(value: Any, path: Path, where: str) -> str:
    """An id that must be a non-negative integer (int or digit string), as a string."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and _is_integer_id(value):
        return value
    raise _error(path, where, f"id is not a non-negative integer: {value!r}")


def _required_id(record: dict[str, Any], field: str, path: Path, where: str) -> str:
    """A non-empty string or integer id from ``record[field]``, as a string."""
    value = record.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _error(path, where, f"missing or invalid {field}: {value!r}")


def _timestamp(value: Any, path: Path, where: str) -> int:
    """An integer time stamp from an int, an integral float, a number string or a datetime."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value)
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _error(path, where, f"timestamp is not an integer: {value!r}")


def _text(value: Any, path: Path, where: str, field: str) -> str:
    """A text field: None -> "", a number -> its string, a list of strings -> joined by spaces."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return " ".join(part.strip() for part in value if part.strip())
    raise _error(path, where, f"{field} is not text: {value!r}")


_BARE_COMMA = re.compile(r",(?! )")


def _split_categories(text: str) -> list[str]:
    """Split a category string on "|", else on commas.

    When the string has a comma not followed by a space (Amazon 2018 Scientific style,
    ``"Industrial & Scientific,Tapes, Adhesives & Sealants"``), only those bare commas separate,
    so names that contain ", " stay whole; otherwise every comma separates.
    """
    if "|" in text:
        parts = text.split("|")
    elif _BARE_COMMA.search(text):
        parts = _BARE_COMMA.split(text)
    else:
        parts = text.split(",")
    return [part.strip() for part in parts if part.strip()]


def _categories(value: Any, path: Path, where: str) -> list[str]:
    """Categories from None, a list of strings or a delimited string (see ``_split_categories``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return _split_categories(value)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return [part.strip() for part in value if part.strip()]
    raise _error(path, where, f"categories are neither a list of strings nor a string: {value!r}")


def _token_sequence(text: str, path: Path, where: str) -> list[str]:
    """Parse a RecBole token_seq of quoted names such as ``'Beauty', "Women's", 'Face'``."""
    if not text.strip():
        return []
    try:
        value = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise _error(path, where, f"categories are not a list of quoted names: {text!r}")
    return [part.strip() for part in value if part.strip()]


def _string_list(text: str, path: Path, where: str, field: str) -> list[str]:
    """Parse a Python list of strings such as ``['Beef', 'Lamb']``; empty names are dropped.

    ``ast.literal_eval`` only accepts literals, so no code in the file is run.
    """
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise _error(path, where, f"{field} is not a list of quoted names: {text!r}")
    return [part.strip() for part in value if part.strip()]


def _unix_seconds(text: str, path: Path, where: str, field: str) -> int:
    """Unix seconds of an ISO date and time such as ``2012-11-09 21:54:47+00:00``.

    A time without an offset is read as UTC, so the result does not depend on the machine.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _error(path, where, f"{field} is not a date and time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


# ---------------------------------------------------------------------------------------------
# Building the two tables


def _item(
    domain: str,
    item_type: str,
    item_id: str,
    *,
    title: str = "",
    categories: list[str] | None = None,
    brand: str = "",
    description: str = "",
    year: str = "",
    price: str = "",
) -> dict[str, Any]:
    return {
        "key": item_key(domain, item_id),
        "domain": domain,
        "item_id": item_id,
        "item_type": item_type,
        "title": title,
        "categories": categories or [],
        "brand": brand,
        "description": description,
        "year": year,
        "price": price,
    }


def _tables(
    items: list[dict[str, Any]], domain: str, events: list[tuple[str, str, int]], source: Path
) -> tuple[Dataset, Dataset]:
    """(items, interactions) datasets from item records and (user, item, timestamp) events."""
    item_columns = {name: [item[name] for item in items] for name in ITEM_FEATURES}
    return _dataset(item_columns, ITEM_FEATURES), _interactions(domain, events, source)


def _interactions(domain: str, events: list[tuple[str, str, int]], source: Path) -> Dataset:
    """The interactions table from (user_id, item_id, timestamp) events."""
    if not events:
        raise CorpusError(f"domain {domain!r} has no interactions (read from {source})")
    users, items, timestamps = (list(column) for column in zip(*events))
    return _dataset(
        {
            "domain": [domain] * len(events),
            "user_id": users,
            "item_id": items,
            "timestamp": timestamps,
        },
        INTERACTION_FEATURES,
    )


def _grouped_by_user(events: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Events grouped by user (first appearance order), each user's stably sorted by time."""
    by_user: dict[str, list[tuple[str, str, int]]] = {}
    for event in events:
        by_user.setdefault(event[0], []).append(event)
    return [
        event
        for user_events in by_user.values()
        for event in sorted(user_events, key=itemgetter(2))
    ]


def _by_integer_key(mapping: dict[str, Any], path: Path) -> list[tuple[str, Any]]:
    """The (key, value) pairs of a JSON object keyed by integer ids, in numeric key order."""
    for key in mapping:
        _integer_id(key, path, f"key {key!r}")
    return sorted(mapping.items(), key=lambda pair: int(pair[0]))


def _p5_events(path: Path, known_items: set[str]) -> list[tuple[str, str, int]]:
    """Events from a P5 ``sequential_data.txt`` (lines "user item item ...", in time order)."""
    events: list[tuple[str, str, int]] = []
    seen_users: set[str] = set()
    for number, line in _numbered_lines(path):
        fields = line.split()
        if len(fields) < 2:
            raise _error(path, f"line {number}", f"expected 'user item item ...', got {line!r}")
        for value in fields:
            if not _is_integer_id(value):
                raise _error(path, f"line {number}", f"id is not an integer: {value!r}")
        user_id, item_ids = fields[0], fields[1:]
        if user_id in seen_users:
            raise _error(path, f"line {number}", f"user {user_id!r} already had a line")
        seen_users.add(user_id)
        for position, item_id in enumerate(item_ids):
            if item_id not in known_items:
                raise _error(path, f"line {number}", f"item {item_id!r} is not in the item table")
            events.append((user_id, item_id, position))
    return events


# ---------------------------------------------------------------------------------------------
# Readers


def read_p5_beauty(folder: str | Path, domain: str = "amazon14_beauty") -> tuple[Dataset, Dataset]:
    """Read the P5 Amazon Beauty split from ``folder``.

    Files: ``sequential_data.txt``, ``datamaps.json`` and ``Amazon_Beauty.item``.

    Item ids are the P5 integer ids; text comes from the RecBole item file (keyed by ASIN) through
    ``datamaps["id2item"]``. P5 ids without a text row are left out of the item table.
    """
    folder = Path(folder)
    datamaps_path = _data_file(folder, "datamaps.json")
    datamaps = _read_json(datamaps_path)
    if not isinstance(datamaps, dict) or not isinstance(datamaps.get("id2item"), dict):
        raise _error(datamaps_path, "line 1", "expected a JSON object with an 'id2item' mapping")
    text_path = _data_file(folder, "Amazon_Beauty.item")
    rows_by_asin: dict[str, tuple[int, dict[str, str]]] = {}
    required = ("item_id", "title", "categories", "price", "brand")
    for number, row in _table_rows(text_path, "\t", required):
        if row["item_id"] in rows_by_asin:
            raise _error(text_path, f"line {number}", f"duplicate item id {row['item_id']!r}")
        rows_by_asin[row["item_id"]] = (number, row)
    items = []
    for p5_id, asin in _by_integer_key(datamaps["id2item"], datamaps_path):
        if asin not in rows_by_asin:
            continue
        number, row = rows_by_asin[asin]
        items.append(
            _item(
                domain,
                "beauty product",
                p5_id,
                title=row["title"].strip(),
                categories=_token_sequence(row["categories"], text_path, f"line {number}"),
                brand=row["brand"].strip(),
                price=row["price"].strip(),
            )
        )
    sequences_path = _data_file(folder, "sequential_data.txt")
    events = _p5_events(sequences_path, {item["item_id"] for item in items})
    return _tables(items, domain, events, sequences_path)


def read_p5_yelp(folder: str | Path, domain: str = "yelp_p5") -> tuple[Dataset, Dataset]:
    """Read the P5 Yelp split: ``sequential_data.txt`` and ``closed_categories.json``.

    ``closed_categories.json`` is keyed by the P5 item id itself (no datamaps needed). The only
    text is the category list; all-digit entries are dropped, since P5 put item numbers there as
    placeholders for businesses without categories.
    """
    folder = Path(folder)
    categories_path = _data_file(folder, "closed_categories.json")
    categories_by_id = _read_json(categories_path)
    if not isinstance(categories_by_id, dict):
        raise _error(categories_path, "line 1", "expected a JSON object {item id: [category, ...]}")
    items = []
    for item_id, categories in _by_integer_key(categories_by_id, categories_path):
        names = _categories(categories, categories_path, f"item {item_id!r}")
        named = [name for name in names if not name.isdigit()]
        items.append(_item(domain, "business", item_id, categories=named))
    sequences_path = _data_file(folder, "sequential_data.txt")
    events = _p5_events(sequences_path, set(categories_by_id))
    return _tables(items, domain, events, sequences_path)


def read_lcrec(
    folder: str | Path, name: str, domain: str, item_type: str
) -> tuple[Dataset, Dataset]:
    """Read the LC-Rec format: ``{name}.item.json`` and ``{name}.inter.json``.

    ``item.json`` is ``{"<id>": {title, description, brand, categories}}`` (categories a comma
    separated string, description a string or list); ``inter.json`` is
    ``{"<user>": [item ids in time order]}``.
    """
    folder = Path(folder)
    items_path = _data_file(folder, f"{name}.item.json")
    table = _read_json(items_path)
    if not isinstance(table, dict):
        raise _error(items_path, "line 1", "expected a JSON object {item id: {title, ...}}")
    items = []
    for item_id, fields in table.items():
        where = f"item {item_id!r}"
        if not isinstance(fields, dict):
            raise _error(items_path, where, f"expected an object of text fields, got {fields!r}")
        items.append(
            _item(
                domain,
                item_type,
                item_id,
                title=_text(fields.get("title"), items_path, where, "title"),
                categories=_categories(fields.get("categories"), items_path, where),
                brand=_text(fields.get("brand"), items_path, where, "brand"),
                description=_text(fields.get("description"), items_path, where, "description"),
            )
        )
    inter_path = _data_file(folder, f"{name}.inter.json")
    sequences = _read_json(inter_path)
    if not isinstance(sequences, dict):
        raise _error(inter_path, "line 1", "expected a JSON object {user: [item id, ...]}")
    events = []
    for user_id, item_ids in sequences.items():
        where = f"user {user_id!r}"
        if not isinstance(item_ids, list):
            raise _error(inter_path, where, f"expected a list of item ids, got {item_ids!r}")
        for position, value in enumerate(item_ids):
            item_id = _integer_id(value, inter_path, where)
            if item_id not in table:
                raise _error(inter_path, where, f"item {item_id!r} is not in {items_path.name}")
            events.append((user_id, item_id, position))
    return _tables(items, domain, events, inter_path)


def read_recbole_movies(folder: str | Path, domain: str = "ml-100k") -> tuple[Dataset, Dataset]:
    """Read RecBole atomic MovieLens files: ``{domain}.item`` and ``{domain}.inter``.

    Genres (``class``, space separated) become categories and ``release_year`` the year; each
    user's ratings are stably sorted by timestamp, so ties keep file order.
    """
    folder = Path(folder)
    items_path = _data_file(folder, f"{domain}.item")
    items = []
    known_items: set[str] = set()
    for number, row in _table_rows(items_path, "\t", required=("item_id", "movie_title")):
        item_id = _required_id(row, "item_id", items_path, f"line {number}")
        if item_id in known_items:
            raise _error(items_path, f"line {number}", f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        items.append(
            _item(
                domain,
                "movie",
                item_id,
                title=row["movie_title"].strip(),
                categories=row.get("class", "").split(),
                year=row.get("release_year", "").strip(),
            )
        )
    inter_path = _data_file(folder, f"{domain}.inter")
    events = []
    for number, row in _table_rows(inter_path, "\t", required=("user_id", "item_id", "timestamp")):
        where = f"line {number}"
        user_id = _required_id(row, "user_id", inter_path, where)
        item_id = _required_id(row, "item_id", inter_path, where)
        if item_id not in known_items:
            raise _error(inter_path, where, f"item {item_id!r} is not in {items_path.name}")
        timestamp = _timestamp(row["timestamp"], inter_path, where)
        events.append((user_id, item_id, timestamp))
    return _tables(items, domain, _grouped_by_user(events), inter_path)


def read_microlens(folder: str | Path, domain: str = "microlens_50k") -> tuple[Dataset, Dataset]:
    """Read MicroLens-50K: ``MicroLens-50k_titles.csv`` and ``MicroLens-50k_pairs.tsv``.

    The titles file (header ``item,title``, CSV-quoted) gives each video's caption, which becomes
    the title. Each line of the pairs file is ``user<TAB>item item ...`` in time order (oldest
    first); the timestamp is the position in that sequence.
    """
    folder = Path(folder)
    titles_path = _data_file(folder, "MicroLens-50k_titles.csv")
    items = []
    known_items: set[str] = set()
    for number, row in _table_rows(titles_path, ",", required=("item", "title")):
        where = f"line {number}"
        item_id = _integer_id(row["item"].strip(), titles_path, where)
        if item_id in known_items:
            raise _error(titles_path, where, f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        items.append(_item(domain, "short video", item_id, title=row["title"].strip()))
    pairs_path = _data_file(folder, "MicroLens-50k_pairs.tsv")
    events = []
    seen_users: set[str] = set()
    for number, line in _numbered_lines(pairs_path):
        where = f"line {number}"
        fields = line.split("\t")
        item_ids = fields[1].split() if len(fields) == 2 else []
        if not item_ids:
            raise _error(pairs_path, where, f"expected 'user<TAB>item item ...', got {line!r}")
        user_id = _integer_id(fields[0].strip(), pairs_path, where)
        if user_id in seen_users:
            raise _error(pairs_path, where, f"user {user_id!r} already had a line")
        seen_users.add(user_id)
        for position, item_id in enumerate(item_ids):
            if item_id not in known_items:
                raise _error(pairs_path, where, f"item {item_id!r} is not in {titles_path.name}")
            events.append((user_id, item_id, position))
    return _tables(items, domain, events, pairs_path)


XWINES_ZIP = "XWines_Slim_1K_wines_150K_ratings.zip"
XWINES_WINES = "XWines_Slim_1K_wines.csv"
XWINES_RATINGS = "XWines_Slim_150K_ratings.csv"


def _wine_description(row: dict[str, str], pairings: list[str]) -> str:
    """A wine's description, e.g. ``Full-bodied, high acidity. Napa Valley, United States.
    Pairs with beef, lamb.`` (empty parts are left out)."""
    acidity = row["Acidity"].strip().lower()
    taste = [row["Body"].strip(), f"{acidity} acidity" if acidity else ""]
    place = [row["RegionName"].strip(), row["Country"].strip()]
    pairs = f"Pairs with {', '.join(food.lower() for food in pairings)}" if pairings else ""
    sentences = [", ".join(part for part in parts if part) for parts in (taste, place)]
    return " ".join(f"{sentence}." for sentence in [*sentences, pairs] if sentence)


def read_xwines(folder: str | Path, domain: str = "xwines") -> tuple[Dataset, Dataset]:
    """Read X-Wines Slim: both CSV files inside ``XWines_Slim_1K_wines_150K_ratings.zip``.

    Wines: title = WineName, brand = WineryName, categories = [Type] + Grapes, description = body,
    acidity, region, country and the Harmonize food pairings in one short text (Grapes and
    Harmonize are Python list strings). Ratings: one interaction per row; each user's rows are
    ordered by Date, then RatingID, and the timestamp is the Date in Unix seconds (read as UTC).
    Errors name a member as ``<zip path>/<member>``.
    """
    folder = Path(folder)
    zip_path = _data_file(folder, XWINES_ZIP)
    texts = _zip_texts(zip_path, (XWINES_WINES, XWINES_RATINGS))
    wines_path = zip_path / XWINES_WINES
    required = ("WineID", "WineName", "Type", "Grapes", "Harmonize", "Body", "Acidity")
    required += ("Country", "RegionName", "WineryName")
    items = []
    known_items: set[str] = set()
    for number, row in _table_rows(wines_path, ",", required, text=texts[XWINES_WINES]):
        where = f"line {number}"
        item_id = _required_id(row, "WineID", wines_path, where)
        if item_id in known_items:
            raise _error(wines_path, where, f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        grapes = _string_list(row["Grapes"], wines_path, where, "Grapes")
        pairings = _string_list(row["Harmonize"], wines_path, where, "Harmonize")
        wine_type = row["Type"].strip()
        items.append(
            _item(
                domain,
                "wine",
                item_id,
                title=row["WineName"].strip(),
                categories=[wine_type, *grapes] if wine_type else grapes,
                brand=row["WineryName"].strip(),
                description=_wine_description(row, pairings),
            )
        )
    ratings_path = zip_path / XWINES_RATINGS
    by_user: dict[str, list[tuple[int, int, str]]] = {}
    rating_ids: set[int] = set()
    required = ("RatingID", "UserID", "WineID", "Date")
    for number, row in _table_rows(ratings_path, ",", required, text=texts[XWINES_RATINGS]):
        where = f"line {number}"
        rating_id = int(_integer_id(row["RatingID"].strip(), ratings_path, where))
        if rating_id in rating_ids:
            raise _error(ratings_path, where, f"duplicate RatingID {rating_id}")
        rating_ids.add(rating_id)
        user_id = _required_id(row, "UserID", ratings_path, where)
        item_id = _required_id(row, "WineID", ratings_path, where)
        if item_id not in known_items:
            raise _error(ratings_path, where, f"item {item_id!r} is not in {XWINES_WINES}")
        timestamp = _unix_seconds(row["Date"], ratings_path, where, "Date")
        by_user.setdefault(user_id, []).append((timestamp, rating_id, item_id))
    # Users in order of first appearance; each user's ratings by (Date, RatingID).
    events = [
        (user_id, item_id, timestamp)
        for user_id, ratings in by_user.items()
        for timestamp, _, item_id in sorted(ratings)
    ]
    return _tables(items, domain, events, ratings_path)


FOURSQUARE_FILES = ("NYC_val.csv", "NYC_test.csv")


def read_foursquare(folder: str | Path, domain: str = "foursquare_nyc") -> tuple[Dataset, Dataset]:
    """Read Foursquare NYC check-ins in the GETNext format: ``NYC_val.csv`` then ``NYC_test.csv``.

    Items are venues (``POI_id``) titled with their category name (``POI_catname``); a venue
    whose category name differs between rows keeps the first. Each check-in is an interaction
    with ``UTC_time`` in Unix seconds; each user's check-ins are stably sorted by it, so ties keep
    file order (val before test). Consecutive repeats of a venue are kept.
    """
    folder = Path(folder)
    items = []
    known_items: set[str] = set()
    events = []
    required = ("user_id", "POI_id", "POI_catname", "UTC_time")
    for name in FOURSQUARE_FILES:
        path = _data_file(folder, name)
        for number, row in _table_rows(path, ",", required):
            where = f"line {number}"
            user_id = _required_id(row, "user_id", path, where)
            item_id = _required_id(row, "POI_id", path, where)
            timestamp = _unix_seconds(row["UTC_time"], path, where, "UTC_time")
            if item_id not in known_items:
                known_items.add(item_id)
                items.append(_item(domain, "venue", item_id, title=row["POI_catname"].strip()))
            events.append((user_id, item_id, timestamp))
    return _tables(items, domain, _grouped_by_user(events), folder)


def read_generic(
    interactions_path: str | Path, items_path: str | Path, domain: str, item_type: str = "item"
) -> tuple[Dataset, Dataset]:
    """Read a user's own files: JSONL, CSV or Parquet (``.jsonl``/``.csv`` may be gzipped).

    Items need ``item_id`` plus any of title, categories (a list, or a string split on "|" or
    ","), brand, description, year, price. Interactions need ``user_id`` and ``item_id``;
    ``timestamp`` is optional but, if one row has it, every row must. Without it, rows are in time
    order and the timestamp is the position in the user's sequence. Each user's events are
    stably sorted by timestamp.
    """
    items_path, interactions_path = Path(items_path), Path(interactions_path)
    items = []
    known_items: set[str] = set()
    for where, record in _records(items_path):
        item_id = _required_id(record, "item_id", items_path, where)
        if item_id in known_items:
            raise _error(items_path, where, f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        text = {
            field: _text(record.get(field), items_path, where, field)
            for field in ("title", "brand", "description", "year", "price")
        }
        categories = _categories(record.get("categories"), items_path, where)
        items.append(_item(domain, item_type, item_id, categories=categories, **text))
    events = []
    positions: dict[str, int] = {}
    has_timestamps: bool | None = None
    for where, record in _records(interactions_path):
        user_id = _required_id(record, "user_id", interactions_path, where)
        item_id = _required_id(record, "item_id", interactions_path, where)
        if item_id not in known_items:
            raise _error(interactions_path, where, f"item {item_id!r} is not in {items_path.name}")
        raw_timestamp = record.get("timestamp")
        row_has_timestamp = raw_timestamp not in (None, "")
        if has_timestamps is None:
            has_timestamps = row_has_timestamp
        elif row_has_timestamp != has_timestamps:
            raise _error(
                interactions_path,
                where,
                f"timestamp {raw_timestamp!r}: some rows have a timestamp and some do not",
            )
        if has_timestamps:
            timestamp = _timestamp(raw_timestamp, interactions_path, where)
        else:
            timestamp = positions.get(user_id, 0)
            positions[user_id] = timestamp + 1
        events.append((user_id, item_id, timestamp))
    return _tables(items, domain, _grouped_by_user(events), interactions_path)


# ---------------------------------------------------------------------------------------------
# Bundled domains


@dataclass(frozen=True)
class BundledDomain:
    """One folder of ``data/``: its item type and its reader, ``read(folder, domain=name)``."""

    item_type: str
    read: Callable[..., tuple[Dataset, Dataset]]


def _lcrec_domain(name: str, item_type: str) -> BundledDomain:
    return BundledDomain(item_type, partial(read_lcrec, name=name, item_type=item_type))


BUNDLED_DOMAINS: dict[str, BundledDomain] = {
    "amazon14_beauty": BundledDomain("beauty product", read_p5_beauty),
    "yelp_p5": BundledDomain("business", read_p5_yelp),
    "amazon18_scientific": _lcrec_domain("Scientific", "industrial and scientific product"),
    "amazon18_office": _lcrec_domain("Office", "office product"),
    "ml-100k": BundledDomain("movie", read_recbole_movies),
    "microlens_50k": BundledDomain("short video", read_microlens),
    "xwines": BundledDomain("wine", read_xwines),
    "foursquare_nyc": BundledDomain("venue", read_foursquare),
}
# The bundled domains held out of pretraining and used only for zero-shot evaluation.
DEFAULT_ZERO_SHOT_DOMAINS: tuple[str, ...] = ("amazon18_office", "ml-100k")


def read_domain(name: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> tuple[Dataset, Dataset]:
    """Read the bundled domain ``name`` from ``data_dir/name`` as (items, interactions)."""
    if name not in BUNDLED_DOMAINS:
        raise ValueError(f"unknown domain {name!r}; bundled domains are {sorted(BUNDLED_DOMAINS)}")
    return BUNDLED_DOMAINS[name].read(Path(data_dir) / name, domain=name)


def split_domains(domains: list[str], zero_shot: list[str]) -> tuple[list[str], list[str]]:
    """Split ``domains`` into (pretraining, zero-shot) lists, both in the order of ``domains``.

    Zero-shot domains are never trained on; each must be one of ``domains``.
    """
    unknown = [name for name in zero_shot if name not in domains]
    if unknown:
        raise ValueError(f"zero-shot domains {unknown} are not among the domains {domains}")
    held_out = set(zero_shot)
    pretraining = [name for name in domains if name not in held_out]
    return pretraining, [name for name in domains if name in held_out]


# ---------------------------------------------------------------------------------------------
# Sequences and splits


def to_sequences(interactions: Dataset) -> Dataset:
    """One row per (domain, user): item keys in time order.

    Users keep the order of their first interaction; each user's items are stably sorted by
    timestamp, so ties keep the order of the interactions table.
    """
    columns = interactions.select_columns(["domain", "user_id", "item_id", "timestamp"]).to_dict()
    events: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for domain, user_id, item_id, timestamp in zip(
        columns["domain"], columns["user_id"], columns["item_id"], columns["timestamp"]
    ):
        events.setdefault((domain, user_id), []).append((timestamp, item_key(domain, item_id)))
    rows: dict[str, list[Any]] = {"domain": [], "user_id": [], "items": []}
    for (domain, user_id), user_events in events.items():
        rows["domain"].append(domain)
        rows["user_id"].append(user_id)
        rows["items"].append([key for _, key in sorted(user_events, key=itemgetter(0))])
    return _dataset(rows, SEQUENCE_FEATURES)


def leave_one_out(sequences: Dataset) -> dict[str, Dataset]:
    """Leave-one-out split of sequences into "train", "validation" and "test".

    For a user with items ``s``: train has ``items = s[:-2]``; validation has ``history = s[:-2]``,
    ``target = s[-2]``; test has ``history = s[:-1]``, ``target = s[-1]``. Users with fewer than
    3 items appear in train only, with all their items, and in neither validation nor test.
    """
    columns = sequences.select_columns(["domain", "user_id", "items"]).to_dict()
    train: dict[str, list[Any]] = {"domain": [], "user_id": [], "items": []}
    validation: dict[str, list[Any]] = {"domain": [], "user_id": [], "history": [], "target": []}
    test: dict[str, list[Any]] = {"domain": [], "user_id": [], "history": [], "target": []}
    for domain, user_id, items in zip(columns["domain"], columns["user_id"], columns["items"]):
        if len(items) < 3:
            train["domain"].append(domain)
            train["user_id"].append(user_id)
            train["items"].append(items)
            continue
        for split, values in (
            (train, {"items": items[:-2]}),
            (validation, {"history": items[:-2], "target": items[-2]}),
            (test, {"history": items[:-1], "target": items[-1]}),
        ):
            split["domain"].append(domain)
            split["user_id"].append(user_id)
            for column, value in values.items():
                split[column].append(value)
    return {
        "train": _dataset(train, SEQUENCE_FEATURES),
        "validation": _dataset(validation, EVALUATION_FEATURES),
        "test": _dataset(test, EVALUATION_FEATURES),
    }


# ---------------------------------------------------------------------------------------------
# Corpus on disk


@dataclass(frozen=True)
class OwnDomain:
    """A user's own domain for ``build_corpus``: files that ``read_generic`` reads, and what its items are."""

    interactions: str | Path
    items: str | Path
    item_type: str = "item"


def build_corpus(
    domains: list[str], out_dir: str | Path, data_dir: str | Path = DEFAULT_DATA_DIR,
    own_domains: Mapping[str, OwnDomain] | None = None,
) -> Path:
    """Read the bundled ``domains`` and the user's ``own_domains`` (name -> files, see ``read_generic``);
    write ``items.parquet`` and ``interactions.parquet``.

    All domains are read before anything is written; each file is written to a temporary file in
    ``out_dir`` and moved into place with ``os.replace``, so a failure leaves earlier outputs
    intact.
    Returns ``out_dir``.
    """
    own_domains = dict(own_domains or {})
    names = list(domains) + list(own_domains)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"expected a non-empty list of distinct domains, got {names}")
    out_dir = Path(out_dir)
    parts = [read_domain(name, data_dir) for name in domains]
    parts += [read_generic(own.interactions, own.items, name, own.item_type) for name, own in own_domains.items()]
    tables = {
        "items": datasets.concatenate_datasets([items for items, _ in parts]),
        "interactions": datasets.concatenate_datasets([interactions for _, interactions in parts]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, table in tables.items():
            handle, temporary = tempfile.mkstemp(
                dir=out_dir, prefix=f".{name}.", suffix=".parquet.tmp"
            )
            os.close(handle)
            staged.append((Path(temporary), out_dir / f"{name}.parquet"))
            table.to_parquet(temporary)
        for temporary, final in staged:
            os.replace(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return out_dir


def load_corpus(
    out_dir: str | Path, streaming: bool = False
) -> dict[str, Dataset | IterableDataset]:
    """Load ``items`` and ``interactions`` written by ``build_corpus`` (streamed if asked)."""
    return {
        name: datasets.load_dataset(
            "parquet",
            data_files=str(Path(out_dir) / f"{name}.parquet"),
            features=features,
            split="train",
            streaming=streaming,
        )
        for name, features in CORPUS_FEATURES.items()
    }


def main(argv: list[str] | None = None) -> Path:
    """``python -m training.corpus``: a corpus from bundled domains and your own files."""
    parser = argparse.ArgumentParser(description="""Build a corpus (items.parquet, interactions.parquet).

    python -m training.corpus --output_dir outputs/my-corpus \\
        --own my_movies data/examples/my_movies/interactions.csv data/examples/my_movies/items.csv movie

--own NAME INTERACTIONS ITEMS ITEM_TYPE adds your own domain: interactions (user_id, item_id, optional timestamp)
and items (item_id and any of title, categories, brand, description, year, price) as CSV, JSONL or Parquet.""",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--domains", nargs="*", default=[], help=f"bundled domains: {sorted(BUNDLED_DOMAINS)}")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--own", nargs=4, action="append", default=[],
                        metavar=("NAME", "INTERACTIONS", "ITEMS", "ITEM_TYPE"))
    args = parser.parse_args(argv)
    own = {name: OwnDomain(interactions, items, item_type) for name, interactions, items, item_type in args.own}
    out_dir = build_corpus(args.domains, args.output_dir, args.data_dir, own)
    print(f"corpus of {args.domains + list(own)} written to {out_dir}")
    return out_dir


if __name__ == "__main__":
    main()
