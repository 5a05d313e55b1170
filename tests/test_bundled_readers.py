"""The readers of the newer bundled formats (MicroLens, X-Wines, Foursquare) on small files: order, text, bad rows."""

from pathlib import Path

import pytest

from tests.corpus_helpers import assert_message, write, write_zip
from training.bundled_domains import read_foursquare, read_microlens, read_xwines
from training.corpus_schema import CorpusError
from training.splits import to_sequences

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
    assert items[0]["description"] == ("Full-bodied, high acidity. Napa Valley, United States. Pairs with beef, lamb.")
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
