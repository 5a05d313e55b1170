"""Bring your own catalogue: the README's path from a user's own files (the shipped example) to a corpus, an
indexed pipeline folder, a zero-shot evaluation and a LoRA, through the commands a user runs."""

from pathlib import Path

import pytest
from transformers import pipeline

from modeling_recbase import RecBaseConfig, RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer, ResidualQuantizer
from training import adapt, corpus, evaluate, index_items
from training.readers import read_generic

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "examples" / "my_movies"


@pytest.fixture
def base_folder(tmp_path) -> Path:
    """A small untrained RecBase with an item tokenizer that knows no items yet, saved the usual way: room for
    the example's 300 films (16 x 16 x 16 codes + 16), a random frozen quantizer."""
    tokenizer = RecBaseTokenizer(codebook_sizes=[16, 16, 16], disambiguation_size=16)
    tokenizer.set_quantizer(ResidualQuantizer(384, [32], 16, [16, 16, 16]), {})
    config = RecBaseConfig.from_preset(
        "recbase-tiny",
        hidden_size=32,
        num_hidden_layers=1,
        intermediate_size=64,
        codebook_sizes=[16, 16, 16],
        disambiguation_size=16,
    )
    folder = tmp_path / "base"
    RecBaseForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_own_files_to_zero_shot_evaluation_and_a_lora(tiny_run, base_folder, tmp_path):
    corpus_dir = corpus.main(
        [
            "--output_dir",
            str(tmp_path / "corpus"),
            "--own",
            "my_movies",
            str(EXAMPLE / "interactions.csv"),
            str(EXAMPLE / "items.csv"),
            "movie",
        ]
    )
    folder = index_items.main(
        [
            "--checkpoint",
            str(base_folder),
            "--corpus_dir",
            str(corpus_dir),
            "--domains",
            "my_movies",
            "--output_dir",
            str(tmp_path / "indexed"),
            "--cache_dir",
            str(tiny_run["root"] / "embeddings"),
        ]
    )
    recommend = pipeline("next-item-generation", model=str(folder), trust_remote_code=True)
    assert len(recommend.tokenizer.domain_items("my_movies")) == 300
    assert (
        recommend.tokenizer.item_text("my_movies/1") == 'Describe a movie:\n{"title": "Toy Story", '
        '"categories": ["Animation", "Children\'s", "Comedy"], "year": "1995"}'
    )
    ranked = recommend({"history": ["my_movies/1", "my_movies/50"]}, top_k=5)
    assert len({row["item"] for row in ranked}) == 5 and all(row["item"].startswith("my_movies/") for row in ranked)
    results = evaluate.main(
        [
            "--checkpoint",
            str(folder),
            "--corpus_dir",
            str(corpus_dir),
            "--domains",
            "my_movies",
            "--zero_shot",
            "my_movies",
            "--max_users",
            "10",
            "--output",
            str(tmp_path / "zero.json"),
            "--cache_dir",
            str(tiny_run["root"] / "embeddings"),
        ]
    )
    assert results["domains"]["my_movies"]["role"] == "zero-shot" and results["domains"]["my_movies"]["users"] == 10
    adapted = adapt.main(
        [
            "--base",
            str(folder),
            "--corpus_dir",
            str(corpus_dir),
            "--domains",
            "my_movies",
            "--num_epochs",
            "0.2",
            "--min_steps",
            "2",
            "--train_fractions",
            "1.0",
            "--code_score_weights",
            "--sasrec_max_epochs",
            "1",
            "--eval_max_users",
            "10",
            "--output_dir",
            str(tmp_path / "adapt"),
            "--eval_cache_dir",
            str(tiny_run["root"] / "embeddings"),
        ]
    )
    assert adapt.RECBASE_LORA in adapted["runs"][0]["models"]


@pytest.mark.parametrize(
    "row, message",
    [
        ("user_id,item_id,timestamp\nu1,999,5\n", "item '999' is not in items.csv"),
        ("user_id,timestamp\nu1,5\n", "item_id"),
    ],
)
def test_bad_own_files_name_the_file_and_line(tmp_path, row, message):
    (tmp_path / "interactions.csv").write_text(row)
    (tmp_path / "items.csv").write_text("item_id,title\n1,A film\n")
    with pytest.raises(ValueError, match=message) as error:
        corpus.main(
            [
                "--output_dir",
                str(tmp_path / "corpus"),
                "--own",
                "mine",
                str(tmp_path / "interactions.csv"),
                str(tmp_path / "items.csv"),
                "movie",
            ]
        )
    assert "interactions.csv" in str(error.value) and "line 2" in str(error.value)
    assert not (tmp_path / "corpus" / "items.parquet").exists()  # nothing half-written


def own_corpus(tmp_path: Path, interactions: str, items: str, interactions_name: str = "interactions.csv") -> Path:
    """``training.corpus.main`` on the two files written as given; returns the output folder."""
    (tmp_path / interactions_name).write_text(interactions, encoding="utf-8")
    (tmp_path / "items.csv").write_text(items, encoding="utf-8")
    corpus.main(
        [
            *("--output_dir", str(tmp_path / "corpus"), "--own", "mine"),
            *(str(tmp_path / interactions_name), str(tmp_path / "items.csv"), "movie"),
        ]
    )
    return tmp_path / "corpus"


THREE_VIEWS = "user_id,item_id,timestamp\nu1,1,{0}\nu1,2,{1}\nu1,3,{2}\n"
THREE_FILMS = "item_id,title\n1,Alien\n2,Heat\n3,Ran\n"


@pytest.mark.parametrize(
    "interactions, items",
    [
        ("\ufeff" + THREE_VIEWS.format(1, 2, 3), "\ufeff" + THREE_FILMS),  # Excel's "CSV UTF-8" byte-order mark
        (THREE_VIEWS.format(1, 2, 3).replace(",", ";"), THREE_FILMS.replace(",", ";")),
        (THREE_VIEWS.format(1, 2, 3).replace(",", "\t"), THREE_FILMS),
        (THREE_VIEWS.format("2021-03-01 10:00:00", "2021-03-01T11:00:00Z", "2021-03-02 09:00:00+01:00"), THREE_FILMS),
    ],
    ids=["byte-order mark", "semicolons", "tabs", "ISO-8601 timestamps"],
)
def test_own_files_as_spreadsheets_write_them_are_read(tmp_path, interactions, items):
    splits = corpus.load_corpus(own_corpus(tmp_path, interactions, items))
    assert splits["test"][0]["history"] == ["mine/1", "mine/2"] and splits["test"][0]["target"] == "mine/3"
    assert splits["items"]["title"] == ["Alien", "Heat", "Ran"]


def test_a_missing_title_is_empty_never_nan(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"item_id": "1", "title": NaN, "brand": "Fox"}\n{"item_id": "2"}\n')
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,1\nu1,2\nu1,1\n")
    items, _ = read_generic(tmp_path / "interactions.csv", tmp_path / "items.jsonl", "mine")
    assert items["title"] == ["", ""] and items["brand"] == ["Fox", ""]


@pytest.mark.parametrize(
    "interactions, items, file, message",
    [
        (THREE_VIEWS.format(1, 2, 3), "item_id,name\n1,Alien\n2,Heat\n3,Ran\n", "items.csv", "no item has any text"),
        ("user_id,item_id\nu1,1\nu2,2\nu2,3\n", THREE_FILMS, "interactions.csv", "no user is left to evaluate"),
        (
            THREE_VIEWS.format(1, 2, 3),
            "item_id,title\n1,Alien\nfilms/2,Heat\n3,Ran\n",
            "items.csv, line 3",
            "contains '/'",
        ),
        (THREE_VIEWS.format(1, 2, "tuesday"), THREE_FILMS, "interactions.csv, line 4", "timestamp"),
        ("user_id;item_id,timestamp\nu1;1,2\n", THREE_FILMS, "interactions.csv, line 1", "ambiguous"),
    ],
    ids=["no text", "no user to evaluate", "slash in an id", "bad timestamp", "mixed delimiters"],
)
def test_own_files_that_cannot_be_used_are_refused_by_name(tmp_path, interactions, items, file, message):
    with pytest.raises(ValueError, match=message) as error:
        own_corpus(tmp_path, interactions, items)
    assert file in str(error.value)
    assert not (tmp_path / "corpus").exists()  # nothing written
