"""Users' own files (read_generic) and bad input to every reader: each message names the file, the line (or user)
and the offending value."""

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.corpus_helpers import assert_message, write
from training.bundled_domains import read_lcrec, read_p5_beauty, read_p5_yelp, read_recbole_movies
from training.corpus_schema import INTERACTION_FEATURES, ITEM_FEATURES, CorpusError
from training.readers import read_generic
from training.splits import to_sequences

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
        "a,Books|Science Fiction\n"
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
    good = 'A1\tLipstick\tBeauty\t1.0\t"\'Beauty\', ""Women\'s"""\t5.0\tAcme\n'
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
