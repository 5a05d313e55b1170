"""The corpus on disk: build, load (streamed too), its saved splits, and a failed build that leaves the previous one
intact."""

import shutil
from pathlib import Path

import pytest
from datasets import Dataset, IterableDataset

from tests.corpus_helpers import bundled, write
from training.bundled_domains import DEFAULT_DATA_DIR
from training.corpus import build_corpus, load_corpus
from training.corpus_schema import CORPUS_FEATURES, INTERACTION_FEATURES, ITEM_FEATURES, CorpusError
from training.splits import leave_one_out, to_sequences


def test_build_and_load_corpus(tmp_path):
    out = build_corpus(["amazon18_office", "ml-100k"], tmp_path / "corpus")
    assert sorted(path.name for path in out.iterdir()) == sorted(f"{name}.parquet" for name in CORPUS_FEATURES)
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


def test_the_splits_are_saved_once_with_the_corpus_as_leave_one_out_computes_them(tmp_path):
    loaded = load_corpus(build_corpus(["xwines", "foursquare_nyc"], tmp_path / "corpus"))
    splits = leave_one_out(to_sequences(loaded["interactions"]))
    for name in ("train", "validation", "test"):
        assert loaded[name].features == CORPUS_FEATURES[name]
        assert loaded[name].to_list() == splits[name].to_list()
    # Per domain, the saved rows are in the order a domain's own split has: what evaluation samples from.
    foursquare = loaded["interactions"].filter(lambda d: d == "foursquare_nyc", input_columns="domain")
    alone = leave_one_out(to_sequences(foursquare))["test"].to_list()
    assert loaded["test"].filter(lambda d: d == "foursquare_nyc", input_columns="domain").to_list() == alone


def test_a_corpus_without_its_splits_is_refused_by_name(tmp_path):
    out = build_corpus(["xwines"], tmp_path / "corpus")
    (out / "validation.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="validation.parquet missing"):
        load_corpus(out)
