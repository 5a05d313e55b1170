"""Bring your own catalogue: the README's path from a user's own files (the shipped example) to a corpus, an
indexed pipeline folder, a zero-shot evaluation and a LoRA, through the commands a user runs."""

from pathlib import Path

import pytest
from transformers import pipeline

from modeling_recbase import RecBaseConfig, RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer, ResidualQuantizer
from training import adapt, corpus, evaluate, index_items

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
            "--eval_max_users",
            "10",
            "--output_dir",
            str(tmp_path / "adapt"),
            "--eval_cache_dir",
            str(tiny_run["root"] / "embeddings"),
        ]
    )
    assert adapt.RECBASE_LORA in adapted["domains"]["my_movies"]["models"]


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
