"""The bundled domains read from data/: counts against the README and the sources, text, time order."""

import csv
import gzip
import hashlib
import io
import re
import zipfile
from datetime import UTC, datetime

import pytest

from tests.corpus_helpers import bundled, items_by_id, readme_counts, write
from training.bundled_domains import BUNDLED_DOMAINS, DEFAULT_DATA_DIR, read_domain, read_recbole_movies
from training.corpus_schema import INTERACTION_FEATURES, ITEM_FEATURES, SEQUENCE_FEATURES
from training.splits import to_sequences


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
        user: [key for _, key in sorted(events, key=lambda event: event[0])] for user, events in expected.items()
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
        raw = path.read_bytes() if path.exists() else gzip.decompress((folder / f"{file_name}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest, file_name


def test_microlens_titles_and_sequences():
    items, interactions = bundled("microlens_50k")
    video = items_by_id(items)["1"]
    # a CSV-quoted caption that contains a comma and hashtags
    assert video["title"] == (
        "Gu long song gaga bad, even three hundred years old are not let go. # comic # Two Yuan # My destiny villain"
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
        "description": "Medium-bodied, high acidity. Serra Gaúcha, Brazil. Pairs with pork, rich fish, shellfish.",
        "year": "",
        "price": "",
    }
    blend = wines["179060"]
    grapes = ["Merlot", "Cabernet Sauvignon", "Petit Verdot", "Petite Sirah"]
    assert blend["categories"] == ["Red", *grapes]
    assert blend["description"] == (
        "Full-bodied, high acidity. California, United States. Pairs with beef, lamb, veal, poultry."
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
    date = datetime.fromisoformat(first["Date"]).replace(tzinfo=UTC)
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
        user_id: [key for _, key in sorted(events, key=lambda event: event[0])] for user_id, events in expected.items()
    }
    # user 1041 has two check-ins in the same second (NYC_test.csv lines 5627, 5628): file order
    tied = ["foursquare_nyc/507ca847e4b068bf2784eab3", "foursquare_nyc/4e0d073e483bc2b5f47416ec"]
    assert any(got["1041"][i : i + 2] == tied for i in range(len(got["1041"])))
    # consecutive repeats of a venue are kept (SOURCE.md: 1,432)
    assert sum(a == b for items in got.values() for a, b in zip(items, items[1:])) == 1432


# ---------------------------------------------------------------------------------------------
# Generic reader


def test_unknown_domain():
    with pytest.raises(ValueError, match="netflix"):
        read_domain("netflix")
