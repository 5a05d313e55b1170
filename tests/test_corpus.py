"""Tests for training/corpus.py: bundled readers, generic reader, splits, errors, Parquet I/O."""

import csv
import functools
import gzip
import hashlib
import io
import json
import re
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, IterableDataset

from training.corpus import (
    BUNDLED_DOMAINS,
    DEFAULT_DATA_DIR,
    DEFAULT_ZERO_SHOT_DOMAINS,
    EVALUATION_FEATURES,
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    SEQUENCE_FEATURES,
    CorpusError,
    build_corpus,
    leave_one_out,
    load_corpus,
    read_domain,
    read_foursquare,
    read_generic,
    read_lcrec,
    read_microlens,
    read_p5_beauty,
    read_p5_yelp,
    read_recbole_movies,
    read_xwines,
    split_domains,
    to_sequences,
)


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


def test_readme_lists_every_bundled_domain():
    assert set(readme_counts()) == set(BUNDLED_DOMAINS)


@pytest.mark.parametrize("name", list(BUNDLED_DOMAINS))
def test_bundled_domain_counts_match_readme(name):
    items, interactions = bundled(name)
    users = len(interactions.unique("user_id"))
    assert (users, len(items), len(interactions)) == readme_counts()[name]
    assert items.features == ITEM_FEATURES
    assert interactions.features == INTERACTION_FEATURES
    assert items.unique("domain") == [name] and interactions.unique("domain") == [name]
    assert items.unique("item_type") == [BUNDLED_DOMAINS[name].item_type]
    assert set(interactions.unique("item_id")) <= set(items["item_id"])
    assert len(set(items["key"])) == len(items)
    assert all(key == f"{name}/{item_id}" for key, item_id in zip(items["key"], items["item_id"]))


def test_beauty_text_is_joined_through_datamaps():
    items = items_by_id(bundled("amazon14_beauty")[0])
    first = items["1"]  # datamaps id2item["1"] = ASIN B004756YJA
    assert first["title"] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert first["categories"] == ["Beauty", "Makeup", "Nails", "Nail Polish"]
    assert (first["brand"], first["price"]) == ("OPI", "12.0")
    # a CSV-quoted token_seq with a double-quoted name: "'Beauty', 'Fragrance', ""Women's"", ..."
    fragrance = ["Beauty", "Fragrance", "Women's"]
    assert any(row["categories"][:3] == fragrance for row in items.values())
    assert sum(1 for row in items.values() if not row["title"]) == 7


def test_yelp_categories_drop_numeric_placeholders():
    items = items_by_id(bundled("yelp_p5")[0])
    assert items["1"]["categories"] == ["Restaurants", "Mediterranean", "Greek"]
    assert not any(name.isdigit() for row in items.values() for name in row["categories"])


def test_lcrec_categories_keep_names_that_contain_commas():
    scientific = items_by_id(bundled("amazon18_scientific")[0])
    assert scientific["0"]["categories"] == [
        "Industrial & Scientific",
        "Industrial Electrical",
        "Passive Components",
        "Capacitors",
    ]
    assert any("Tapes, Adhesives & Sealants" in row["categories"] for row in scientific.values())
    office = items_by_id(bundled("amazon18_office")[0])
    assert office["0"]["categories"] == [
        "Office Electronics",
        "Telephones & Accessories",
        "Cordless Telephones",
    ]


def test_movies_have_year_and_genres():
    movie = items_by_id(bundled("ml-100k")[0])["1"]
    assert (movie["title"], movie["year"]) == ("Toy Story", "1995")
    assert movie["categories"] == ["Animation", "Children's", "Comedy"]


def test_ml100k_sequences_are_stably_sorted_by_timestamp():
    """Compare with the raw file: each user's rows sorted by timestamp, ties in file order."""
    raw = gzip.decompress((DEFAULT_DATA_DIR / "ml-100k" / "ml-100k.inter.gz").read_bytes())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8")), delimiter="\t"))[1:]
    expected: dict[str, list[tuple[int, str]]] = {}
    for user_id, item_id, _rating, timestamp in rows:
        expected.setdefault(user_id, []).append((int(timestamp), f"ml-100k/{item_id}"))
    ties = sum(len(events) - len({time for time, _ in events}) for events in expected.values())
    assert ties > 0  # the comparison below is only meaningful with ties

    sequences = to_sequences(bundled("ml-100k")[1])
    assert sequences.features == SEQUENCE_FEATURES
    got = dict(zip(sequences["user_id"], sequences["items"]))
    assert got == {
        user: [key for _, key in sorted(events, key=lambda event: event[0])]
        for user, events in expected.items()
    }


def test_recbole_movies_ties_keep_file_order(tmp_path):
    write(
        tmp_path / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tA\t1990\tDrama\n2\tB\t1991\tComedy Drama\n3\tC\t1992\t\n",
    )
    write(
        tmp_path / "ml-100k.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t1\t5\t50\n8\t3\t4\t10\n7\t2\t3\t30\n7\t3\t1\t50\n",
    )
    items, interactions = read_recbole_movies(tmp_path)
    assert items_by_id(items)["3"]["categories"] == []
    sequences = to_sequences(interactions)
    assert dict(zip(sequences["user_id"], sequences["items"])) == {
        "7": ["ml-100k/2", "ml-100k/1", "ml-100k/3"],
        "8": ["ml-100k/3"],
    }


# (users, items, interactions) as measured in each folder's SOURCE.md.
SOURCE_COUNTS = {
    "microlens_50k": (50000, 19220, 359708),
    "xwines": (10561, 1007, 150000),
    "foursquare_nyc": (620, 3248, 20713),
}


@pytest.mark.parametrize("name", list(SOURCE_COUNTS))
def test_new_domain_counts_match_source(name):
    items, interactions = bundled(name)
    users = len(interactions.unique("user_id"))
    assert (users, len(items), len(interactions)) == SOURCE_COUNTS[name]


@pytest.mark.parametrize("name", list(SOURCE_COUNTS))
def test_new_domain_files_are_unmodified_copies(name):
    """Each file SOURCE.md gives a sha256 for is bundled as is, or gzipped (same after gunzip)."""
    folder = DEFAULT_DATA_DIR / name
    pattern = re.compile(r"`(?:[^`]*/)?([^`/]+)`.*?sha256 ([0-9a-f]{64})")
    digests = dict(pattern.findall((folder / "SOURCE.md").read_text(encoding="utf-8")))
    assert len(digests) == (1 if name == "xwines" else 2)
    for file_name, digest in digests.items():
        path = folder / file_name
        raw = path.read_bytes() if path.exists() else gzip.decompress(
            (folder / f"{file_name}.gz").read_bytes()
        )
        assert hashlib.sha256(raw).hexdigest() == digest, file_name


def test_microlens_titles_and_sequences():
    items, interactions = bundled("microlens_50k")
    video = items_by_id(items)["1"]
    # a CSV-quoted caption that contains a comma and hashtags
    assert video["title"] == (
        "Gu long song gaga bad, even three hundred years old are not let go."
        " # comic # Two Yuan # My destiny villain"
    )
    assert (video["categories"], video["brand"], video["description"]) == ([], "", "")
    assert all(items["title"])

    pairs_path = DEFAULT_DATA_DIR / "microlens_50k" / "MicroLens-50k_pairs.tsv.gz"
    raw = gzip.decompress(pairs_path.read_bytes())
    expected = {}
    for line in raw.decode("utf-8").splitlines():
        user_id, item_ids = line.split("\t")
        expected[user_id] = [f"microlens_50k/{item_id}" for item_id in item_ids.split()]
    sequences = to_sequences(interactions)
    assert dict(zip(sequences["user_id"], sequences["items"])) == expected
    assert interactions[:5]["timestamp"] == [0, 1, 2, 3, 4]  # user 1: positions in the line


def test_xwines_text_and_time_order():
    items, interactions = bundled("xwines")
    wines = items_by_id(items)
    assert wines["100001"] == {
        "key": "xwines/100001",
        "domain": "xwines",
        "item_id": "100001",
        "item_type": "wine",
        "title": "Espumante Moscatel",
        "categories": ["Sparkling", "Muscat/Moscato"],
        "brand": "Casa Perini",
        "description": "Medium-bodied, high acidity. Serra Gaúcha, Brazil."
        " Pairs with pork, rich fish, shellfish.",
        "year": "",
        "price": "",
    }
    blend = wines["179060"]
    grapes = ["Merlot", "Cabernet Sauvignon", "Petit Verdot", "Petite Sirah"]
    assert blend["categories"] == ["Red", *grapes]
    assert blend["description"] == (
        "Full-bodied, high acidity. California, United States."
        " Pairs with beef, lamb, veal, poultry."
    )

    archive = zipfile.ZipFile(DEFAULT_DATA_DIR / "xwines" / "XWines_Slim_1K_wines_150K_ratings.zip")
    rows = list(csv.DictReader(io.StringIO(archive.read("XWines_Slim_150K_ratings.csv").decode())))
    expected: dict[str, list[tuple[str, int, str]]] = {}
    for row in rows:
        event = (row["Date"], int(row["RatingID"]), f"xwines/{row['WineID']}")
        expected.setdefault(row["UserID"], []).append(event)
    # the file is in RatingID order, which is not time order: the check below is meaningful
    assert any(events != sorted(events) for events in expected.values())
    sequences = to_sequences(interactions)
    assert dict(zip(sequences["user_id"], sequences["items"])) == {
        user_id: [key for _, _, key in sorted(events)] for user_id, events in expected.items()
    }
    first = rows[0]  # RatingID 143, user 1356810
    date = datetime.fromisoformat(first["Date"]).replace(tzinfo=timezone.utc)
    assert {
        timestamp
        for user_id, item_id, timestamp in zip(
            interactions["user_id"], interactions["item_id"], interactions["timestamp"]
        )
        if (user_id, item_id) == (first["UserID"], first["WineID"])
    } == {int(date.timestamp())}


def test_foursquare_venues_and_time_order():
    items, interactions = bundled("foursquare_nyc")
    venues = items_by_id(items)
    assert venues["4fa5cedbe4b038e6a2b5ed1c"]["title"] == "Bar"
    assert venues["4fa5cedbe4b038e6a2b5ed1c"]["categories"] == []
    # category "Burger Joint" in its first row (NYC_val.csv line 611), "Bar" later: keep the first
    assert venues["4ad35de9f964a520ffe320e3"]["title"] == "Burger Joint"
    assert len(set(items["title"])) == 192

    expected: dict[str, list[tuple[datetime, str]]] = {}
    files = {}
    for name in ("NYC_val.csv.gz", "NYC_test.csv.gz"):
        raw = gzip.decompress((DEFAULT_DATA_DIR / "foursquare_nyc" / name).read_bytes())
        for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
            moment = datetime.fromisoformat(row["UTC_time"])
            key = f"foursquare_nyc/{row['POI_id']}"
            expected.setdefault(row["user_id"], []).append((moment, key))
            files.setdefault(row["user_id"], set()).add(name)
    assert sum(len(names) == 2 for names in files.values()) == 354  # users in both slices
    sequences = to_sequences(interactions)
    got = dict(zip(sequences["user_id"], sequences["items"]))
    assert got == {
        user_id: [key for _, key in sorted(events, key=lambda event: event[0])]
        for user_id, events in expected.items()
    }
    # user 1041 has two check-ins in the same second (NYC_test.csv lines 5627, 5628): file order
    tied = ["foursquare_nyc/507ca847e4b068bf2784eab3", "foursquare_nyc/4e0d073e483bc2b5f47416ec"]
    assert any(got["1041"][i : i + 2] == tied for i in range(len(got["1041"])))
    # consecutive repeats of a venue are kept (SOURCE.md: 1,432)
    assert sum(a == b for items in got.values() for a, b in zip(items, items[1:])) == 1432


# ---------------------------------------------------------------------------------------------
# Generic reader


ITEM_ROWS = [
    {
        "item_id": "b1",
        "title": "Dune",
        "categories": ["Books", "Science Fiction"],
        "brand": "Ace",
        "description": "A desert planet.",
        "year": 1965,
        "price": 9.99,
    },
    {"item_id": "b2", "title": "Emma"},
]
INTERACTION_ROWS = [
    {"user_id": "u1", "item_id": "b2", "timestamp": 20},
    {"user_id": "u2", "item_id": "b1", "timestamp": 5},
    {"user_id": "u1", "item_id": "b1", "timestamp": 10},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSONL, CSV (categories joined by "|") or Parquet, chosen by suffix."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if ".csv" in path.suffixes:
        columns = list(dict.fromkeys(column for row in rows for column in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            cells = {k: "|".join(v) if isinstance(v, list) else v for k, v in row.items()}
            writer.writerow(cells)
        return write(path, buffer.getvalue())
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".jsonl.gz", ".csv.gz"])
def test_generic_reader_formats(tmp_path, suffix):
    items_path = write_rows(tmp_path / f"items{suffix}", ITEM_ROWS)
    inter_path = write_rows(tmp_path / f"interactions{suffix}", INTERACTION_ROWS)
    items, interactions = read_generic(inter_path, items_path, domain="books", item_type="book")
    assert items.features == ITEM_FEATURES and interactions.features == INTERACTION_FEATURES
    assert items.to_list() == [
        {
            "key": "books/b1",
            "domain": "books",
            "item_id": "b1",
            "item_type": "book",
            "title": "Dune",
            "categories": ["Books", "Science Fiction"],
            "brand": "Ace",
            "description": "A desert planet.",
            "year": "1965",
            "price": "9.99",
        },
        {
            "key": "books/b2",
            "domain": "books",
            "item_id": "b2",
            "item_type": "book",
            "title": "Emma",
            "categories": [],
            "brand": "",
            "description": "",
            "year": "",
            "price": "",
        },
    ]
    sequences = to_sequences(interactions)
    assert sequences.to_list() == [
        {"domain": "books", "user_id": "u1", "items": ["books/b1", "books/b2"]},
        {"domain": "books", "user_id": "u2", "items": ["books/b1"]},
    ]


def test_generic_reader_without_timestamps_uses_positions(tmp_path):
    items_path = write_rows(tmp_path / "items.jsonl", ITEM_ROWS)
    rows = [{"user_id": "u1", "item_id": "b2"}, {"user_id": "u2", "item_id": "b2"}]
    inter_path = write_rows(tmp_path / "inter.jsonl", rows + [{"user_id": "u1", "item_id": "b1"}])
    _, interactions = read_generic(inter_path, items_path, domain="books")
    assert interactions["timestamp"] == [0, 1, 0]  # grouped by user: u1, u1, u2
    assert to_sequences(interactions)["items"] == [["books/b2", "books/b1"], ["books/b2"]]


def test_generic_category_strings(tmp_path):
    items_path = write(
        tmp_path / "items.csv",
        "item_id,categories\n"
        'a,Books|Science Fiction\n'
        'b,"Office, Pens, Ballpoint Pens"\n'
        'c,"Industrial & Scientific,Tapes, Adhesives & Sealants,Tape"\n',
    )
    inter_path = write(tmp_path / "inter.csv", "user_id,item_id\nu,a\n")
    items, _ = read_generic(inter_path, items_path, domain="d")
    assert items["categories"] == [
        ["Books", "Science Fiction"],
        ["Office", "Pens", "Ballpoint Pens"],
        ["Industrial & Scientific", "Tapes, Adhesives & Sealants", "Tape"],
    ]


# ---------------------------------------------------------------------------------------------
# Sequences, splits, domains


def test_leave_one_out():
    sequences = Dataset.from_dict(
        {
            "domain": ["d", "d", "d"],
            "user_id": ["long", "short", "three"],
            "items": [["d/a", "d/b", "d/c", "d/d"], ["d/x", "d/y"], ["d/p", "d/q", "d/r"]],
        },
        features=SEQUENCE_FEATURES,
    )
    before = sequences.to_list()
    splits = leave_one_out(sequences)
    assert sequences.to_list() == before
    assert splits["train"].features == SEQUENCE_FEATURES
    assert splits["validation"].features == EVALUATION_FEATURES
    assert splits["test"].features == EVALUATION_FEATURES
    assert splits["train"].to_list() == [
        {"domain": "d", "user_id": "long", "items": ["d/a", "d/b"]},
        {"domain": "d", "user_id": "short", "items": ["d/x", "d/y"]},
        {"domain": "d", "user_id": "three", "items": ["d/p"]},
    ]
    assert splits["validation"].to_list() == [
        {"domain": "d", "user_id": "long", "history": ["d/a", "d/b"], "target": "d/c"},
        {"domain": "d", "user_id": "three", "history": ["d/p"], "target": "d/q"},
    ]
    assert splits["test"].to_list() == [
        {"domain": "d", "user_id": "long", "history": ["d/a", "d/b", "d/c"], "target": "d/d"},
        {"domain": "d", "user_id": "three", "history": ["d/p", "d/q"], "target": "d/r"},
    ]


def test_split_domains():
    domains = list(BUNDLED_DOMAINS)
    pretraining, zero_shot = split_domains(domains, list(DEFAULT_ZERO_SHOT_DOMAINS))
    assert pretraining == [
        "amazon14_beauty",
        "yelp_p5",
        "amazon18_scientific",
        "microlens_50k",
        "xwines",
        "foursquare_nyc",
    ]
    assert zero_shot == ["amazon18_office", "ml-100k"]
    with pytest.raises(ValueError, match="netflix"):
        split_domains(domains, ["netflix"])


def test_unknown_domain():
    with pytest.raises(ValueError, match="netflix"):
        read_domain("netflix")


# ---------------------------------------------------------------------------------------------
# Bad input: every message names the file and the line (or user) and the offending value


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("1 1 2\n2\n", ["line 2", "'2'"]),  # wrong number of fields
        ("1 1 2\n2 1 x\n", ["line 2", "'x'"]),  # non-integer id
        ("1 1 2\n\n2 1 9\n", ["line 3", "'9'", "not in the item table"]),  # unknown item
    ],
)
def test_p5_bad_rows(tmp_path, lines, expected):
    write(tmp_path / "closed_categories.json", '{"1": ["Bars"], "2": ["Cafes"]}')
    sequences = write(tmp_path / "sequential_data.txt", lines)
    with pytest.raises(CorpusError) as error:
        read_p5_yelp(tmp_path)
    assert_message(error, sequences, *expected)


@pytest.mark.parametrize("name", ["sequential_data.txt", "sequential_data.txt.gz"])
def test_non_utf8_names_file_and_line(tmp_path, name):
    write(tmp_path / "closed_categories.json", '{"1": ["Bars"], "2": ["Cafes"]}')
    sequences = write(tmp_path / name, b"1 1 2\n2 1 \xff\n")
    with pytest.raises(CorpusError) as error:
        read_p5_yelp(tmp_path)
    assert_message(error, sequences, "line 2", "UTF-8", "xff")


def test_bad_json_names_file_and_line(tmp_path):
    categories = write(tmp_path / "closed_categories.json", '{"1": ["Bars"],\n"2": ["Cafes"\n}')
    write(tmp_path / "sequential_data.txt", "1 1 2\n")
    with pytest.raises(CorpusError) as error:
        read_p5_yelp(tmp_path)
    assert_message(error, categories, "line 3", "bad JSON")


def test_empty_domain_is_named(tmp_path):
    write(tmp_path / "closed_categories.json", '{"1": ["Bars"]}')
    write(tmp_path / "sequential_data.txt", "\n")
    with pytest.raises(CorpusError, match="'my_yelp' has no interactions"):
        read_p5_yelp(tmp_path, domain="my_yelp")


def test_beauty_reader_and_bad_categories(tmp_path):
    header = "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\tcategories:token_seq"
    header += "\tprice:float\tbrand:token\n"
    # the categories field is CSV-quoted, as in the real file: "'Beauty', ""Women's"""
    good = "A1\tLipstick\tBeauty\t1.0\t\"'Beauty', \"\"Women's\"\"\"\t5.0\tAcme\n"
    write(tmp_path / "datamaps.json", '{"id2item": {"1": "A1", "2": "A2"}}')
    write(tmp_path / "sequential_data.txt", "1 1 2\n")
    write(tmp_path / "Amazon_Beauty.item", header + good)
    with pytest.raises(CorpusError) as error:  # A2 has no text row, so item 2 is unknown
        read_p5_beauty(tmp_path)
    assert_message(error, tmp_path / "sequential_data.txt", "line 1", "'2'")

    write(tmp_path / "Amazon_Beauty.item", header + good + "A2\tBlush\tBeauty\t2.0\t'Face\t\t\n")
    with pytest.raises(CorpusError) as error:
        read_p5_beauty(tmp_path)
    assert_message(error, tmp_path / "Amazon_Beauty.item", "line 3", "'Face")

    write(tmp_path / "Amazon_Beauty.item", header + good + "A2\tBlush\tBeauty\t2.0\t'Face'\t\n")
    with pytest.raises(CorpusError) as error:
        read_p5_beauty(tmp_path)
    assert_message(error, tmp_path / "Amazon_Beauty.item", "line 3", "expected 7 fields, got 6")

    write(tmp_path / "Amazon_Beauty.item", header + good + "A2\tBlush\tBeauty\t2.0\t'Face'\t\t\n")
    items, interactions = read_p5_beauty(tmp_path)
    assert items["categories"] == [["Beauty", "Women's"], ["Face"]]
    assert interactions["timestamp"] == [0, 1]


def test_recbole_bad_rows(tmp_path):
    write(tmp_path / "ml-100k.item", "item_id:token\tmovie_title:token_seq\n1\tA\n")
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter = write(tmp_path / "ml-100k.inter", header + "7\t1\t5\t50\n7\t1\t5\n")
    with pytest.raises(CorpusError) as error:
        read_recbole_movies(tmp_path)
    assert_message(error, inter, "line 3", "expected 4 fields, got 3")

    write(inter, header + "7\t1\t5\t50\n7\t1\t5\tyesterday\n")
    with pytest.raises(CorpusError) as error:
        read_recbole_movies(tmp_path)
    assert_message(error, inter, "line 3", "'yesterday'")

    write(inter, header + "7\t1\t5\t50\n7\t4\t5\t60\n")
    with pytest.raises(CorpusError) as error:
        read_recbole_movies(tmp_path)
    assert_message(error, inter, "line 3", "'4'")


def test_lcrec_bad_rows(tmp_path):
    write(tmp_path / "X.item.json", json.dumps({"0": {"title": "Pen", "categories": "Office"}}))
    inter = write(tmp_path / "X.inter.json", json.dumps({"u1": [0, 3]}))
    with pytest.raises(CorpusError) as error:
        read_lcrec(tmp_path, "X", domain="x", item_type="thing")
    assert_message(error, inter, "user 'u1'", "'3'", "X.item.json")

    write(inter, json.dumps({"u1": [0, "zero"]}))
    with pytest.raises(CorpusError) as error:
        read_lcrec(tmp_path, "X", domain="x", item_type="thing")
    assert_message(error, inter, "user 'u1'", "'zero'")

    write(inter, json.dumps({"u1": [0]}))
    items, interactions = read_lcrec(tmp_path, "X", domain="x", item_type="thing")
    assert items[0]["categories"] == ["Office"] and interactions[0]["item_id"] == "0"


def test_generic_bad_rows(tmp_path):
    items_path = write_rows(tmp_path / "items.csv", ITEM_ROWS)
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,b1,10\nu1,b2,soon\n")
    with pytest.raises(CorpusError) as error:
        read_generic(inter, items_path, domain="books")
    assert_message(error, inter, "line 3", "'soon'")

    inter = write(tmp_path / "inter.jsonl", '{"user_id": "u1", "item_id": "b1"}\n{"user_id": \n')
    with pytest.raises(CorpusError) as error:
        read_generic(inter, items_path, domain="books")
    assert_message(error, inter, "line 2", "bad JSON")

    inter = write_rows(tmp_path / "inter.parquet", [{"user_id": "u1", "item_id": "b9"}])
    with pytest.raises(CorpusError) as error:
        read_generic(inter, items_path, domain="books")
    assert_message(error, inter, "row 1", "'b9'")


MICROLENS_TITLES = 'item,title\n1,"Cats, dogs # pets"\n2,Rain\n'


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("1\t1 2\n2 1 2\n", ["line 2", "expected 'user<TAB>item item ...'"]),  # no tab
        ("1\t1 2\n2\t\n", ["line 2", "expected 'user<TAB>item item ...'"]),  # no items
        ("1\t1 2\n\n2\t1 9\n", ["line 3", "'9'", "MicroLens-50k_titles.csv"]),  # unknown item
        ("1\t1 2\nx\t1\n", ["line 2", "'x'"]),  # non-integer user
        ("1\t1 2\n1\t2\n", ["line 2", "user '1' already had a line"]),
    ],
)
def test_microlens_bad_pairs(tmp_path, lines, expected):
    write(tmp_path / "MicroLens-50k_titles.csv", MICROLENS_TITLES)
    pairs = write(tmp_path / "MicroLens-50k_pairs.tsv.gz", lines)
    with pytest.raises(CorpusError) as error:
        read_microlens(tmp_path)
    assert_message(error, pairs, *expected)


def test_microlens_bad_titles_and_good_read(tmp_path):
    write(tmp_path / "MicroLens-50k_pairs.tsv", "7\t2 1\r\n8\t1 2 1\r\n")
    titles = write(tmp_path / "MicroLens-50k_titles.csv", MICROLENS_TITLES + "3,Snow,again\n")
    with pytest.raises(CorpusError) as error:
        read_microlens(tmp_path)
    assert_message(error, titles, "line 4", "expected 2 fields, got 3")

    write(titles, MICROLENS_TITLES + "2,Rain again\n")
    with pytest.raises(CorpusError) as error:
        read_microlens(tmp_path)
    assert_message(error, titles, "line 4", "duplicate item id '2'")

    write(titles, MICROLENS_TITLES)
    items, interactions = read_microlens(tmp_path, domain="clips")
    assert items["title"] == ["Cats, dogs # pets", "Rain"]
    assert items.unique("item_type") == ["short video"]
    assert interactions["timestamp"] == [0, 1, 0, 1, 2]
    assert to_sequences(interactions)["items"] == [
        ["clips/2", "clips/1"],
        ["clips/1", "clips/2", "clips/1"],
    ]


XWINES_HEADER = (
    "WineID,WineName,Type,Elaborate,Grapes,Harmonize,ABV,Body,Acidity,Code,Country,RegionID,"
    "RegionName,WineryID,WineryName,Website,Vintages\n"
)
XWINES_WINE = (
    "1,Reserve,Red,Assemblage/Blend,\"['Merlot', 'Cabernet Franc']\",\"['Beef', 'Lamb']\",14.5,"
    "Full-bodied,High,US,United States,9,Napa Valley,5,Acme Cellars,,[2019]\n"
)
RATINGS_HEADER = "RatingID,UserID,WineID,Vintage,Rating,Date\n"


def write_xwines(folder: Path, wines: str, ratings: str) -> Path:
    return write_zip(
        folder / "XWines_Slim_1K_wines_150K_ratings.zip",
        {"XWines_Slim_150K_ratings.csv": ratings, "XWines_Slim_1K_wines.csv": wines},
    )


def test_xwines_reader_orders_by_date_then_rating_id(tmp_path):
    wines = XWINES_HEADER + XWINES_WINE + XWINES_WINE.replace("1,Reserve", "2,Rosado", 1)
    ratings = (
        RATINGS_HEADER
        + "5,u1,1,2019,4.0,2020-01-02 10:00:00\n"
        + "3,u1,2,2019,3.5,2020-01-02 10:00:00\n"
        + "4,u1,2,2018,3.0,2020-01-01 09:00:00\n"
        + "6,u2,1,2019,5.0,2019-06-30 23:59:59\n"
    )
    write_xwines(tmp_path, wines, ratings)
    items, interactions = read_xwines(tmp_path)
    assert items[0]["categories"] == ["Red", "Merlot", "Cabernet Franc"]
    assert items[0]["brand"] == "Acme Cellars"
    assert items[0]["description"] == (
        "Full-bodied, high acidity. Napa Valley, United States. Pairs with beef, lamb."
    )
    sequences = to_sequences(interactions)
    assert sequences["items"] == [["xwines/2", "xwines/2", "xwines/1"], ["xwines/1"]]
    assert interactions["timestamp"][:2] == [1577869200, 1577959200]  # 2020-01-01 09:00 UTC, ...


SECOND_WINE = XWINES_WINE.replace("1,Reserve", "2,Reserve", 1)


@pytest.mark.parametrize(
    ("wines", "ratings", "member", "expected"),
    [
        ("", "7,u1,9,2019,4.0,2020-01-02 10:00:00\n", "ratings", ["line 2", "'9'", "not in"]),
        ("", "7,u1,1,2019,4.0,yesterday\n", "ratings", ["line 2", "Date", "'yesterday'"]),
        ("", "7,u1,1,2019,4.0\n", "ratings", ["line 2", "expected 6 fields, got 5"]),
        (
            "",
            "7,u,1,2019,4,2020-01-02\n7,v,1,2019,4,2020-01-02\n",
            "ratings",
            ["line 3", "duplicate RatingID 7"],
        ),
        ("", "x,u1,1,2019,4.0,2020-01-02\n", "ratings", ["line 2", "'x'"]),
        (SECOND_WINE.replace("Franc']", "Franc'"), "", "wines", ["line 3", "Grapes"]),
        (
            SECOND_WINE.replace("['Beef', 'Lamb']", "Beef"),
            "",
            "wines",
            ["line 3", "Harmonize", "'Beef'"],
        ),
        (SECOND_WINE.replace(",[2019]", ""), "", "wines", ["line 3", "expected 17 fields, got 16"]),
        (XWINES_WINE, "", "wines", ["line 3", "duplicate item id '1'"]),
    ],
    ids=[
        "unknown-wine",
        "bad-date",
        "short-rating-row",
        "duplicate-rating",
        "bad-rating-id",
        "bad-grapes",
        "bad-harmonize",
        "short-wine-row",
        "duplicate-wine",
    ],
)
def test_xwines_bad_rows(tmp_path, wines, ratings, member, expected):
    zip_path = write_xwines(tmp_path, XWINES_HEADER + XWINES_WINE + wines, RATINGS_HEADER + ratings)
    name = "XWines_Slim_150K_ratings.csv" if member == "ratings" else "XWines_Slim_1K_wines.csv"
    with pytest.raises(CorpusError) as error:
        read_xwines(tmp_path)
    assert_message(error, zip_path / name, *expected)


def test_xwines_bad_zip(tmp_path):
    zip_path = write(tmp_path / "XWines_Slim_1K_wines_150K_ratings.zip", b"PK not really a zip")
    with pytest.raises(CorpusError) as error:
        read_xwines(tmp_path)
    assert_message(error, zip_path, "not a valid zip file")

    write_zip(zip_path, {"XWines_Slim_1K_wines.csv": XWINES_HEADER + XWINES_WINE})
    with pytest.raises(CorpusError) as error:
        read_xwines(tmp_path)
    assert_message(error, zip_path, "no member 'XWines_Slim_150K_ratings.csv'")

    members = {"XWines_Slim_1K_wines.csv": b"WineID\n\xff\n", "XWines_Slim_150K_ratings.csv": ""}
    write_zip(zip_path, members)
    with pytest.raises(CorpusError) as error:
        read_xwines(tmp_path)
    assert_message(error, zip_path / "XWines_Slim_1K_wines.csv", "line 2", "UTF-8")


FOURSQUARE_HEADER = "user_id,POI_id,POI_catid,POI_catname,UTC_time\n"


def test_foursquare_reader_sorts_stably_and_keeps_repeats(tmp_path):
    write(
        tmp_path / "NYC_val.csv.gz",
        FOURSQUARE_HEADER
        + "1,v1,c,Bar,2012-11-10 10:00:00+00:00\n"
        + "2,v2,c,Coffee Shop,2012-11-09 08:00:00+00:00\n"
        + "1,v2,c,Café,2012-11-09 09:00:00+00:00\n",
    )
    write(
        tmp_path / "NYC_test.csv",
        FOURSQUARE_HEADER
        + "1,v3,c,Subway,2012-11-10 10:00:00+00:00\n"  # same second as v1: after it (val first)
        + "1,v3,c,Subway,2012-12-24 10:00:00+00:00\n",
    )
    items, interactions = read_foursquare(tmp_path, domain="nyc")
    assert items["item_id"] == ["v1", "v2", "v3"]
    assert items["title"] == ["Bar", "Coffee Shop", "Subway"]  # v2 keeps its first name
    assert items.unique("item_type") == ["venue"]
    sequences = to_sequences(interactions)
    assert dict(zip(sequences["user_id"], sequences["items"])) == {
        "1": ["nyc/v2", "nyc/v1", "nyc/v3", "nyc/v3"],
        "2": ["nyc/v2"],
    }
    assert interactions["timestamp"][0] == 1352451600  # 2012-11-09 09:00 UTC


@pytest.mark.parametrize(
    ("test_rows", "expected"),
    [
        ("1,v,c,Bar,2012-12-24 10:00:00\n2,v,c,Bar,soon\n", ["line 3", "UTC_time", "'soon'"]),
        ("1,v,c,Bar,2012-12-24 10:00:00\n2,v,c,Bar\n", ["line 3", "expected 5 fields, got 4"]),
        ("1,,c,Bar,2012-12-24 10:00:00\n", ["line 2", "POI_id"]),
    ],
)
def test_foursquare_bad_rows(tmp_path, test_rows, expected):
    write(tmp_path / "NYC_val.csv", FOURSQUARE_HEADER + "1,v1,c,Bar,2012-11-10 10:00:00+00:00\n")
    test_path = write(tmp_path / "NYC_test.csv", FOURSQUARE_HEADER + test_rows)
    with pytest.raises(CorpusError) as error:
        read_foursquare(tmp_path)
    assert_message(error, test_path, *expected)


def test_foursquare_missing_column(tmp_path):
    val = write(tmp_path / "NYC_val.csv", "user_id,POI_id,POI_catname\n1,v1,Bar\n")
    write(tmp_path / "NYC_test.csv", FOURSQUARE_HEADER)
    with pytest.raises(CorpusError) as error:
        read_foursquare(tmp_path)
    assert_message(error, val, "line 1", "UTC_time")


# ---------------------------------------------------------------------------------------------
# Corpus on disk


def test_build_and_load_corpus(tmp_path):
    out = build_corpus(["amazon18_office", "ml-100k"], tmp_path / "corpus")
    assert sorted(path.name for path in out.iterdir()) == ["interactions.parquet", "items.parquet"]
    loaded = load_corpus(out)
    assert len(loaded["items"]) == 2420 + 1682
    assert len(loaded["interactions"]) == 53258 + 100000
    assert loaded["items"].features == ITEM_FEATURES
    assert loaded["interactions"].features == INTERACTION_FEATURES
    assert loaded["items"][0] == bundled("amazon18_office")[0][0]

    streamed = load_corpus(out, streaming=True)
    assert isinstance(streamed["items"], IterableDataset)
    assert next(iter(streamed["items"])) == loaded["items"][0]
    assert sum(1 for _ in streamed["items"]) == len(loaded["items"])
    assert next(iter(streamed["interactions"])) == loaded["interactions"][0]


def test_failed_build_leaves_previous_corpus_intact(tmp_path, monkeypatch):
    out = build_corpus(["amazon18_office"], tmp_path / "corpus")
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    bad_data = tmp_path / "bad_data" / "amazon18_office"
    bad_data.mkdir(parents=True)
    shutil.copy(DEFAULT_DATA_DIR / "amazon18_office" / "Office.item.json.gz", bad_data)
    write(bad_data / "Office.inter.json", '{"0": [0, 1,\n')
    with pytest.raises(CorpusError):
        build_corpus(["amazon18_office"], out, data_dir=bad_data.parent)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    def fail_while_writing_interactions(dataset, path, **kwargs):
        Path(path).write_bytes(b"half a parquet file")
        if "interactions" in Path(path).name:
            raise OSError("disk full")
        return original_to_parquet(dataset, path, **kwargs)

    original_to_parquet = Dataset.to_parquet
    monkeypatch.setattr(Dataset, "to_parquet", fail_while_writing_interactions)
    with pytest.raises(OSError, match="disk full"):
        build_corpus(["ml-100k"], out)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert len(load_corpus(out)["interactions"]) == 53258
