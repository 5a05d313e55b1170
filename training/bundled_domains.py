"""The bundled domains of ``data/``: one reader per source format, and the registry ``BUNDLED_DOMAINS``.

Every reader returns ``(items, interactions)`` in the corpus schema (``training.corpus_schema``). X-Wines is read
from inside its zip file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from datasets import Dataset

from training.corpus_schema import (
    corpus_error,
    domain_tables,
    grouped_by_user,
    integer_id,
    is_integer_id,
    item_row,
    parse_categories,
    parse_timestamp,
    required_id,
    string_list,
    text_field,
    token_sequence,
    unix_seconds,
)
from training.readers import data_file, numbered_lines, read_json, table_rows, zip_texts

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def _by_integer_key(mapping: dict[str, Any], path: Path) -> list[tuple[str, Any]]:
    """The (key, value) pairs of a JSON object keyed by integer ids, in numeric key order."""
    for key in mapping:
        integer_id(key, path, f"key {key!r}")
    return sorted(mapping.items(), key=lambda pair: int(pair[0]))


def _p5_events(path: Path, known_items: set[str]) -> list[tuple[str, str, int]]:
    """Events from a P5 ``sequential_data.txt`` (lines "user item item ...", in time order)."""
    events: list[tuple[str, str, int]] = []
    seen_users: set[str] = set()
    for number, line in numbered_lines(path):
        fields = line.split()
        if len(fields) < 2:
            raise corpus_error(path, f"line {number}", f"expected 'user item item ...', got {line!r}")
        for value in fields:
            if not is_integer_id(value):
                raise corpus_error(path, f"line {number}", f"id is not an integer: {value!r}")
        user_id, item_ids = fields[0], fields[1:]
        if user_id in seen_users:
            raise corpus_error(path, f"line {number}", f"user {user_id!r} already had a line")
        seen_users.add(user_id)
        for position, item_id in enumerate(item_ids):
            if item_id not in known_items:
                raise corpus_error(path, f"line {number}", f"item {item_id!r} is not in the item table")
            events.append((user_id, item_id, position))
    return events


def read_p5_beauty(folder: str | Path, domain: str = "amazon14_beauty") -> tuple[Dataset, Dataset]:
    """Read the P5 Amazon Beauty split from ``folder``.

    Files: ``sequential_data.txt``, ``datamaps.json`` and ``Amazon_Beauty.item``.

    Item ids are the P5 integer ids; text comes from the RecBole item file (keyed by ASIN) through
    ``datamaps["id2item"]``. P5 ids without a text row are left out of the item table.
    """
    folder = Path(folder)
    datamaps_path = data_file(folder, "datamaps.json")
    datamaps = read_json(datamaps_path)
    if not isinstance(datamaps, dict) or not isinstance(datamaps.get("id2item"), dict):
        raise corpus_error(datamaps_path, "line 1", "expected a JSON object with an 'id2item' mapping")
    text_path = data_file(folder, "Amazon_Beauty.item")
    rows_by_asin: dict[str, tuple[int, dict[str, str]]] = {}
    required = ("item_id", "title", "categories", "price", "brand")
    for number, row in table_rows(text_path, "\t", required):
        if row["item_id"] in rows_by_asin:
            raise corpus_error(text_path, f"line {number}", f"duplicate item id {row['item_id']!r}")
        rows_by_asin[row["item_id"]] = (number, row)
    items = []
    for p5_id, asin in _by_integer_key(datamaps["id2item"], datamaps_path):
        if asin not in rows_by_asin:
            continue
        number, row = rows_by_asin[asin]
        items.append(
            item_row(
                domain,
                "beauty product",
                p5_id,
                title=row["title"].strip(),
                categories=token_sequence(row["categories"], text_path, f"line {number}"),
                brand=row["brand"].strip(),
                price=row["price"].strip(),
            )
        )
    sequences_path = data_file(folder, "sequential_data.txt")
    events = _p5_events(sequences_path, {item["item_id"] for item in items})
    return domain_tables(items, domain, events, sequences_path)


def read_p5_yelp(folder: str | Path, domain: str = "yelp_p5") -> tuple[Dataset, Dataset]:
    """Read the P5 Yelp split: ``sequential_data.txt`` and ``closed_categories.json``.

    ``closed_categories.json`` is keyed by the P5 item id itself (no datamaps needed). The only
    text is the category list; all-digit entries are dropped, since P5 put item numbers there as
    placeholders for businesses without categories.
    """
    folder = Path(folder)
    categories_path = data_file(folder, "closed_categories.json")
    categories_by_id = read_json(categories_path)
    if not isinstance(categories_by_id, dict):
        raise corpus_error(categories_path, "line 1", "expected a JSON object {item id: [category, ...]}")
    items = []
    for item_id, categories in _by_integer_key(categories_by_id, categories_path):
        names = parse_categories(categories, categories_path, f"item {item_id!r}")
        named = [name for name in names if not name.isdigit()]
        items.append(item_row(domain, "business", item_id, categories=named))
    sequences_path = data_file(folder, "sequential_data.txt")
    events = _p5_events(sequences_path, set(categories_by_id))
    return domain_tables(items, domain, events, sequences_path)


def read_lcrec(folder: str | Path, name: str, domain: str, item_type: str) -> tuple[Dataset, Dataset]:
    """Read the LC-Rec format: ``{name}.item.json`` and ``{name}.inter.json``.

    ``item.json`` is ``{"<id>": {title, description, brand, categories}}`` (categories a comma
    separated string, description a string or list); ``inter.json`` is
    ``{"<user>": [item ids in time order]}``.
    """
    folder = Path(folder)
    items_path = data_file(folder, f"{name}.item.json")
    table = read_json(items_path)
    if not isinstance(table, dict):
        raise corpus_error(items_path, "line 1", "expected a JSON object {item id: {title, ...}}")
    items = []
    for item_id, fields in table.items():
        where = f"item {item_id!r}"
        if not isinstance(fields, dict):
            raise corpus_error(items_path, where, f"expected an object of text fields, got {fields!r}")
        items.append(
            item_row(
                domain,
                item_type,
                item_id,
                title=text_field(fields.get("title"), items_path, where, "title"),
                categories=parse_categories(fields.get("categories"), items_path, where),
                brand=text_field(fields.get("brand"), items_path, where, "brand"),
                description=text_field(fields.get("description"), items_path, where, "description"),
            )
        )
    inter_path = data_file(folder, f"{name}.inter.json")
    sequences = read_json(inter_path)
    if not isinstance(sequences, dict):
        raise corpus_error(inter_path, "line 1", "expected a JSON object {user: [item id, ...]}")
    events = []
    for user_id, item_ids in sequences.items():
        where = f"user {user_id!r}"
        if not isinstance(item_ids, list):
            raise corpus_error(inter_path, where, f"expected a list of item ids, got {item_ids!r}")
        for position, value in enumerate(item_ids):
            item_id = integer_id(value, inter_path, where)
            if item_id not in table:
                raise corpus_error(inter_path, where, f"item {item_id!r} is not in {items_path.name}")
            events.append((user_id, item_id, position))
    return domain_tables(items, domain, events, inter_path)


def read_recbole_movies(folder: str | Path, domain: str = "ml-100k") -> tuple[Dataset, Dataset]:
    """Read RecBole atomic MovieLens files: ``{domain}.item`` and ``{domain}.inter``.

    Genres (``class``, space separated) become categories and ``release_year`` the year; each
    user's ratings are stably sorted by timestamp, so ties keep file order.
    """
    folder = Path(folder)
    items_path = data_file(folder, f"{domain}.item")
    items = []
    known_items: set[str] = set()
    for number, row in table_rows(items_path, "\t", required=("item_id", "movie_title")):
        item_id = required_id(row, "item_id", items_path, f"line {number}")
        if item_id in known_items:
            raise corpus_error(items_path, f"line {number}", f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        items.append(
            item_row(
                domain,
                "movie",
                item_id,
                title=row["movie_title"].strip(),
                categories=row.get("class", "").split(),
                year=row.get("release_year", "").strip(),
            )
        )
    inter_path = data_file(folder, f"{domain}.inter")
    events = []
    for number, row in table_rows(inter_path, "\t", required=("user_id", "item_id", "timestamp")):
        where = f"line {number}"
        user_id = required_id(row, "user_id", inter_path, where)
        item_id = required_id(row, "item_id", inter_path, where)
        if item_id not in known_items:
            raise corpus_error(inter_path, where, f"item {item_id!r} is not in {items_path.name}")
        timestamp = parse_timestamp(row["timestamp"], inter_path, where)
        events.append((user_id, item_id, timestamp))
    return domain_tables(items, domain, grouped_by_user(events), inter_path)


def read_microlens(folder: str | Path, domain: str = "microlens_50k") -> tuple[Dataset, Dataset]:
    """Read MicroLens-50K: ``MicroLens-50k_titles.csv`` and ``MicroLens-50k_pairs.tsv``.

    The titles file (header ``item,title``, CSV-quoted) gives each video's caption, which becomes
    the title. Each line of the pairs file is ``user<TAB>item item ...`` in time order (oldest
    first); the timestamp is the position in that sequence.
    """
    folder = Path(folder)
    titles_path = data_file(folder, "MicroLens-50k_titles.csv")
    items = []
    known_items: set[str] = set()
    for number, row in table_rows(titles_path, ",", required=("item", "title")):
        where = f"line {number}"
        item_id = integer_id(row["item"].strip(), titles_path, where)
        if item_id in known_items:
            raise corpus_error(titles_path, where, f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        items.append(item_row(domain, "short video", item_id, title=row["title"].strip()))
    pairs_path = data_file(folder, "MicroLens-50k_pairs.tsv")
    events = []
    seen_users: set[str] = set()
    for number, line in numbered_lines(pairs_path):
        where = f"line {number}"
        fields = line.split("\t")
        item_ids = fields[1].split() if len(fields) == 2 else []
        if not item_ids:
            raise corpus_error(pairs_path, where, f"expected 'user<TAB>item item ...', got {line!r}")
        user_id = integer_id(fields[0].strip(), pairs_path, where)
        if user_id in seen_users:
            raise corpus_error(pairs_path, where, f"user {user_id!r} already had a line")
        seen_users.add(user_id)
        for position, item_id in enumerate(item_ids):
            if item_id not in known_items:
                raise corpus_error(pairs_path, where, f"item {item_id!r} is not in {titles_path.name}")
            events.append((user_id, item_id, position))
    return domain_tables(items, domain, events, pairs_path)


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
    zip_path = data_file(folder, XWINES_ZIP)
    texts = zip_texts(zip_path, (XWINES_WINES, XWINES_RATINGS))
    wines_path = zip_path / XWINES_WINES
    required = ("WineID", "WineName", "Type", "Grapes", "Harmonize", "Body", "Acidity")
    required += ("Country", "RegionName", "WineryName")
    items = []
    known_items: set[str] = set()
    for number, row in table_rows(wines_path, ",", required, text=texts[XWINES_WINES]):
        where = f"line {number}"
        item_id = required_id(row, "WineID", wines_path, where)
        if item_id in known_items:
            raise corpus_error(wines_path, where, f"duplicate item id {item_id!r}")
        known_items.add(item_id)
        grapes = string_list(row["Grapes"], wines_path, where, "Grapes")
        pairings = string_list(row["Harmonize"], wines_path, where, "Harmonize")
        wine_type = row["Type"].strip()
        items.append(
            item_row(
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
    for number, row in table_rows(ratings_path, ",", required, text=texts[XWINES_RATINGS]):
        where = f"line {number}"
        rating_id = int(integer_id(row["RatingID"].strip(), ratings_path, where))
        if rating_id in rating_ids:
            raise corpus_error(ratings_path, where, f"duplicate RatingID {rating_id}")
        rating_ids.add(rating_id)
        user_id = required_id(row, "UserID", ratings_path, where)
        item_id = required_id(row, "WineID", ratings_path, where)
        if item_id not in known_items:
            raise corpus_error(ratings_path, where, f"item {item_id!r} is not in {XWINES_WINES}")
        timestamp = unix_seconds(row["Date"], ratings_path, where, "Date")
        by_user.setdefault(user_id, []).append((timestamp, rating_id, item_id))
    # Users in order of first appearance; each user's ratings by (Date, RatingID).
    events = [
        (user_id, item_id, timestamp)
        for user_id, ratings in by_user.items()
        for timestamp, _, item_id in sorted(ratings)
    ]
    return domain_tables(items, domain, events, ratings_path)


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
        path = data_file(folder, name)
        for number, row in table_rows(path, ",", required):
            where = f"line {number}"
            user_id = required_id(row, "user_id", path, where)
            item_id = required_id(row, "POI_id", path, where)
            timestamp = unix_seconds(row["UTC_time"], path, where, "UTC_time")
            if item_id not in known_items:
                known_items.add(item_id)
                items.append(item_row(domain, "venue", item_id, title=row["POI_catname"].strip()))
            events.append((user_id, item_id, timestamp))
    return domain_tables(items, domain, grouped_by_user(events), folder)


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
