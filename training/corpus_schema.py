"""The corpus schema: one item table and one interaction table for every domain, and the field parsers that
hold each value to it.

- items (``ITEM_FEATURES``): one row per item, keyed ``"<domain>/<item_id>"``, with its text fields (missing
  text is ``""`` or ``[]``);
- interactions (``INTERACTION_FEATURES``): one row per (user, item) event with an int64 timestamp; formats
  without time stamps use the position in the user's sequence (0, 1, 2, ...).

A value that does not fit raises ``CorpusError``, whose message names the file, the line (or user, item or
row) and the offending value.
"""

from __future__ import annotations

import ast
import contextlib
import math
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, Features, List, Value

from tokenization_recbase import split_categories

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
SEQUENCE_FEATURES = Features({"domain": Value("string"), "user_id": Value("string"), "items": List(Value("string"))})
EVALUATION_FEATURES = Features(
    {
        "domain": Value("string"),
        "user_id": Value("string"),
        "history": List(Value("string")),
        "target": Value("string"),
    }
)
# The files of a corpus folder: the two tables, then the leave-one-out splits computed from them.
CORPUS_FEATURES = {
    "items": ITEM_FEATURES,
    "interactions": INTERACTION_FEATURES,
    "train": SEQUENCE_FEATURES,
    "validation": EVALUATION_FEATURES,
    "test": EVALUATION_FEATURES,
}


class CorpusError(ValueError):
    """A data file that does not fit the corpus schema; the message says where and what."""


def corpus_error(path: Path, where: str, problem: str) -> CorpusError:
    return CorpusError(f"{path}, {where}: {problem}")


def arrow_dataset(columns: dict[str, list[Any]], features: Features) -> Dataset:
    """A Dataset built straight through Arrow (``Dataset.from_dict`` encodes value by value)."""
    return Dataset(pa.Table.from_pydict(columns, schema=features.arrow_schema))


def item_key(domain: str, item_id: str) -> str:
    """The corpus-wide key of an item: ``"<domain>/<item_id>"``."""
    return f"{domain}/{item_id}"


def is_integer_id(value: str) -> bool:
    return value.isascii() and value.isdigit()


def integer_id(value: Any, path: Path, where: str) -> str:
    """An id that must be a non-negative integer (int or digit string), as a string."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and is_integer_id(value):
        return value
    raise corpus_error(path, where, f"id is not a non-negative integer: {value!r}")


def required_id(record: dict[str, Any], field: str, path: Path, where: str) -> str:
    """A non-empty string or integer id from ``record[field]``, as a string."""
    value = record.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise corpus_error(path, where, f"missing or invalid {field}: {value!r}")


def parse_timestamp(value: Any, path: Path, where: str) -> int:
    """An integer time stamp (seconds) from an int, an integral float, a number string, an ISO-8601 string such as
    "2021-03-01 10:00:00" or "2021-03-01T10:00:00Z" (``unix_seconds``), or a datetime (UTC without a zone)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value)
        with contextlib.suppress(ValueError):
            value = float(value)
        if isinstance(value, str):
            return unix_seconds(value, path, where, "timestamp")
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise corpus_error(path, where, f"timestamp is neither an integer nor an ISO-8601 date and time: {value!r}")


def text_field(value: Any, path: Path, where: str, field: str) -> str:
    """A text field: None or NaN (a missing value) -> "", a number -> its string, a list of strings -> joined by
    spaces."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return " ".join(part.strip() for part in value if part.strip())
    raise corpus_error(path, where, f"{field} is not text: {value!r}")


def parse_categories(value: Any, path: Path, where: str) -> list[str]:
    """Categories from None, a list of strings or a delimited string (see ``split_categories``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return split_categories(value)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return [part.strip() for part in value if part.strip()]
    raise corpus_error(path, where, f"categories are neither a list of strings nor a string: {value!r}")


def token_sequence(text: str, path: Path, where: str) -> list[str]:
    """Parse a RecBole token_seq of quoted names such as ``'Beauty', "Women's", 'Face'``."""
    if not text.strip():
        return []
    try:
        value = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise corpus_error(path, where, f"categories are not a list of quoted names: {text!r}")
    return [part.strip() for part in value if part.strip()]


def string_list(text: str, path: Path, where: str, field: str) -> list[str]:
    """Parse a Python list of strings such as ``['Beef', 'Lamb']``; empty names are dropped.

    ``ast.literal_eval`` only accepts literals, so no code in the file is run.
    """
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise corpus_error(path, where, f"{field} is not a list of quoted names: {text!r}")
    return [part.strip() for part in value if part.strip()]


def unix_seconds(text: str, path: Path, where: str, field: str) -> int:
    """Unix seconds of an ISO date and time such as ``2012-11-09 21:54:47+00:00``.

    A time without an offset is read as UTC, so the result does not depend on the machine.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise corpus_error(path, where, f"{field} is not a date and time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def item_row(
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


def domain_tables(
    items: list[dict[str, Any]], domain: str, events: list[tuple[str, str, int]], source: Path
) -> tuple[Dataset, Dataset]:
    """(items, interactions) datasets from item records and (user, item, timestamp) events."""
    item_columns = {name: [item[name] for item in items] for name in ITEM_FEATURES}
    return arrow_dataset(item_columns, ITEM_FEATURES), _interactions(domain, events, source)


def _interactions(domain: str, events: list[tuple[str, str, int]], source: Path) -> Dataset:
    """The interactions table from (user_id, item_id, timestamp) events."""
    if not events:
        raise CorpusError(f"domain {domain!r} has no interactions (read from {source})")
    users, items, timestamps = (list(column) for column in zip(*events))
    return arrow_dataset(
        {
            "domain": [domain] * len(events),
            "user_id": users,
            "item_id": items,
            "timestamp": timestamps,
        },
        INTERACTION_FEATURES,
    )


def grouped_by_user(events: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Events grouped by user (first appearance order), each user's stably sorted by time."""
    by_user: dict[str, list[tuple[str, str, int]]] = {}
    for event in events:
        by_user.setdefault(event[0], []).append(event)
    return [event for user_events in by_user.values() for event in sorted(user_events, key=itemgetter(2))]
