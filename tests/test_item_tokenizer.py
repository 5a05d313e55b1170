"""The item tokenizer on real items: quantizer quality, unique IDs, round trips, cold start, bad input."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoTokenizer

from modeling_recbase import RecBaseConfig
from tests.conftest import REPO_ROOT
from tokenization_recbase import SPECIAL_TOKENS, RecBaseTokenizer, assign_unique_codes, unified_item_text
from tokenization_recbase import embedding_cache_recbase as embedding
from tokenization_recbase.embedding_cache_recbase import EmbeddingCache
from training.bundled_domains import read_domain
from training.fit_item_tokenizer import (
    QuantizerFitConfig,
    code_usage,
    collision_rate,
    fit_item_tokenizer,
    kmeans,
    report_markdown,
)

SMALL_FIT = QuantizerFitConfig(
    codebook_sizes=[32, 32, 32],
    hidden_dims=[128],
    latent_dim=32,
    epochs_per_level=3,
    final_epochs=3,
    batch_size=128,
    kmeans_iterations=10,
)


@pytest.fixture(scope="module")
def real_items(tmp_path_factory):
    """300 Scientific items (pretraining) and 100 Office items (zero-shot), with cached embeddings."""
    from datasets import concatenate_datasets

    scientific, _ = read_domain("amazon18_scientific")
    office, _ = read_domain("amazon18_office")
    items = concatenate_datasets([scientific.select(range(300)), office.select(range(100))])
    cache_dir = tmp_path_factory.mktemp("embeddings")
    EmbeddingCache(cache_dir=cache_dir).embed([unified_item_text(row) for row in items], progress=False)
    return items, cache_dir


@pytest.fixture(scope="module")
def fitted(real_items):
    items, cache_dir = real_items
    return fit_item_tokenizer(
        items,
        ["amazon18_scientific"],
        ["amazon18_office"],
        SMALL_FIT,
        disambiguation_size=8,
        cache_dir=cache_dir,
        log=lambda message: None,
    )


@pytest.mark.parametrize("codebook_sizes, disambiguation_size", [([4, 4], 0), ([8, 4, 2], 3), ([1024] * 4, 64)])
def test_the_model_config_and_the_tokenizer_share_one_vocabulary_layout(codebook_sizes, disambiguation_size):
    tokenizer = RecBaseTokenizer(codebook_sizes=codebook_sizes, disambiguation_size=disambiguation_size)
    config = RecBaseConfig(codebook_sizes=codebook_sizes, disambiguation_size=disambiguation_size)
    assert config.layout.size == len(tokenizer) == config.vocab_size
    assert [config.pad_token_id, config.bos_token_id, config.eos_token_id] == tokenizer.convert_tokens_to_ids(
        list(SPECIAL_TOKENS)
    )
    assert tokenizer.convert_ids_to_tokens(config.layout.first_item_end_id).endswith("_0>")  # last level's code 0
    tokenizer.check_model_config(config, "test")
    with pytest.raises(ValueError, match="special token ids"):
        tokenizer.check_model_config(
            RecBaseConfig(
                codebook_sizes=codebook_sizes, disambiguation_size=disambiguation_size, bos_token_id=2, eos_token_id=1
            ),
            "test",
        )


def test_every_real_item_gets_a_unique_id_and_no_level_collapses(fitted):
    tokenizer, report = fitted
    assert report["unique_ids"] and len(tokenizer.item_codes) == 400
    assert len(set(tokenizer.item_codes.values())) == 400
    for level in report["levels"]:
        assert level["usage"] >= 0.25, level
    for domain, stats in report["domains"].items():
        assert stats["unique_ids"], domain
        assert stats["collision_rate_before_disambiguation"] <= 0.05, (domain, stats)
    assert report["collision_rate_final"] == 0.0
    assert "| amazon18_office | zero-shot | 100 |" in report_markdown(report)


def test_same_seed_gives_same_ids(real_items, fitted):
    items, cache_dir = real_items
    again, _ = fit_item_tokenizer(
        items,
        ["amazon18_scientific"],
        ["amazon18_office"],
        SMALL_FIT,
        disambiguation_size=8,
        cache_dir=cache_dir,
        log=lambda message: None,
    )
    assert dict(again.item_codes) == dict(fitted[0].item_codes)


FIT_IN_A_PROCESS = """
import hashlib, torch
from training.fit_item_tokenizer import QuantizerFitConfig, fit_quantizer
points = torch.randn(3000, 384, generator=torch.Generator().manual_seed(0))
quantizer, _ = fit_quantizer(points, QuantizerFitConfig(codebook_sizes=[32, 32, 32], hidden_dims=[128], latent_dim=32,
                                                        epochs_per_level=2, final_epochs=2), log=lambda message: None)
print(hashlib.sha1(quantizer.encode_to_codes(points)[0].numpy().tobytes()).hexdigest())
"""


def fit_in_a_process() -> str:
    """The last line ``FIT_IN_A_PROCESS`` prints, run by a fresh interpreter in the checkout."""
    result = subprocess.run(
        [sys.executable, "-c", FIT_IN_A_PROCESS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()[-1]


def test_separate_processes_fit_the_same_codes():
    """Item IDs depend on the data and the seed alone, not on how a process's threads summed floats."""
    assert fit_in_a_process() == fit_in_a_process()


def test_round_trip_through_auto_tokenizer_outside_repo(fitted, tmp_path, run_outside_repo):
    tokenizer, _ = fitted
    tokenizer.save_pretrained(tmp_path / "tok")
    expected = {key: tokenizer.encode_history([key])["input_ids"] for key in tokenizer.item_codes}
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    out = run_outside_repo(
        textwrap.dedent(f"""
        import json, torch
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r}, trust_remote_code=True)
        assert type(tok).__module__.startswith("transformers_modules"), type(tok).__module__
        expected = json.load(open({str(tmp_path / "expected.json")!r}))
        for key, ids in expected.items():
            assert tok.encode_history([key])["input_ids"] == ids, key
            assert tok.decode_items(ids) == [key]
        new = tok.add_items(["amazon18_office/new"], embeddings=torch.zeros(1, 384))
        assert new["amazon18_office/new"] not in [tok.item_codes[k] for k in expected]
        print(len(expected))
    """)
    )
    assert out.strip() == "400"


def test_installed_package_loads_without_remote_code(fitted, tmp_path):
    fitted[0].save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, RecBaseTokenizer)
    assert dict(reloaded.item_codes) == dict(fitted[0].item_codes)
    assert reloaded.item_text("amazon18_office/0") == fitted[0].item_text("amazon18_office/0")


def test_history_encoding_and_decoding(fitted):
    tokenizer, _ = fitted
    keys = tokenizer.domain_items("amazon18_scientific")[:3]
    encoded = tokenizer.encode_history(keys)
    assert encoded["input_ids"][0] == tokenizer.bos_token_id
    assert len(encoded["input_ids"]) == 1 + 3 * tokenizer.tokens_per_item
    assert tokenizer.decode_items(encoded["input_ids"]) == keys
    # A batch is left-padded; max_history_items keeps the most recent items.
    batch = tokenizer.encode_history([keys, keys[:1]], return_tensors="pt")
    assert batch["input_ids"].shape == (2, 1 + 3 * tokenizer.tokens_per_item)
    assert batch["attention_mask"][1].tolist() == [0] * (2 * tokenizer.tokens_per_item) + [1] * (
        1 + tokenizer.tokens_per_item
    )
    truncated = tokenizer.encode_history(keys, max_history_items=2)
    assert tokenizer.decode_items(truncated["input_ids"]) == keys[1:]
    # The concept tokens are also plain text for the usual tokenizer API.
    text = tokenizer.decode(encoded["input_ids"], skip_special_tokens=True)
    assert tokenizer(text)["input_ids"] == encoded["input_ids"]


def test_domain_items_and_constraint_table(fitted):
    tokenizer, _ = fitted
    office = tokenizer.domain_items("amazon18_office")
    assert len(office) == 100 and all(key.startswith("amazon18_office/") for key in office)
    table = tokenizer.item_token_ids(office)
    assert table.shape == (100, tokenizer.tokens_per_item)
    assert tokenizer.decode_items(table) == office


def test_cold_start_from_text_and_from_embeddings(fitted, tmp_path):
    original = fitted[0]
    original.save_pretrained(tmp_path)  # work on a copy: the fixture is shared
    copy = RecBaseTokenizer.from_pretrained(tmp_path)
    movies = ["Toy Story", "Toy Story", "GoldenEye", "Heat"]
    texts = [f'Describe a movie:\n{{"title": "{title}"}}' for title in movies]
    keys = [f"ml-100k/{i}" for i in range(1, 5)]
    from_text = copy.add_items(keys, texts=texts)  # a new domain: aligned on these items
    assert "ml-100k" in copy.domain_alignments
    from_embedding = copy.add_items(["ml-100k/5"], embeddings=copy.embed_texts(texts[:1]))  # a known domain now
    new_ids = list(from_text.values()) + list(from_embedding.values())
    assert len(set(new_ids)) == 5  # identical texts still get distinct IDs
    assert not set(new_ids) & set(original.item_codes.values())
    assert copy.item_text("ml-100k/1") == texts[0]
    assert copy.decode_items(copy.item_token_ids(["ml-100k/5"])) == ["ml-100k/5"]
    embed = copy.embed_texts
    copy.embed_texts = lambda *args, **kwargs: pytest.fail("embedded before refusing")  # refused before the slow part
    with pytest.raises(ValueError, match="new domain 'books': a domain needs at least two distinct items"):
        copy.add_items(["books/1", "books/2"], texts=texts[:1] * 2)
    copy.embed_texts = embed
    # Reloading keeps the new domain's alignment: the same text gets the same codes (up to the last level).
    copy.save_pretrained(tmp_path / "again")
    reloaded = RecBaseTokenizer.from_pretrained(tmp_path / "again")
    assert reloaded.add_items(["ml-100k/6"], texts=texts[3:])["ml-100k/6"][:2] == from_text["ml-100k/4"][:2]


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda t: t.encode_history(["amazon18_office/does-not-exist"]),
            "unknown item key 'amazon18_office/does-not-exist'",
        ),
        (lambda t: t.encode_history([]), "a history is a non-empty list of item keys"),
        (lambda t: t.encode_history([["amazon18_office/0"], []]), "a history is a non-empty list of item keys"),
        (lambda t: t.domain_items("books"), "no items of domain 'books'"),
        (lambda t: t.decode_items([3, 3, 3]), "do not split into items"),
        (lambda t: t("<a_1> hello"), "is not a sequence of concept tokens"),
        (lambda t: t.add_items(["amazon18_office/0"], embeddings=torch.zeros(1, 384)), "already indexed"),
        (lambda t: t.add_items(["x/1"], embeddings=torch.zeros(1, 5)), r"expected \(1, 384\)"),
        (lambda t: t.add_items(["x/1"]), "needs texts or embeddings"),
        (lambda t: t.add_items(["no-slash"], texts=["a text"]), "item key #0 'no-slash' is not of the form"),
        (lambda t: t.add_items([None], texts=["a text"]), "item key #0 None is not of the form"),
        (lambda t: t.add_items(["x/1"], texts=["  "]), "item 'x/1' has an empty text"),
        (lambda t: t.add_items(["x/1"], texts=["bad \ud800 text"]), "item 'x/1': its text is not valid Unicode"),
    ],
)
def test_bad_input_names_the_culprit(fitted, call, message):
    with pytest.raises(ValueError, match=message):
        call(fitted[0])


def test_unique_ids_under_heavy_duplication():
    # 50 identical items on a 4-code last level: 4 get distinct last-level codes, the rest disambiguation codes.
    codes = torch.zeros(50, 2, dtype=torch.long)
    distances = torch.arange(4.0).repeat(50, 1)
    taken = {(0, 0, 0)}
    ids = assign_unique_codes(codes, distances, taken, disambiguation_size=16)
    assert len(set(ids)) == 50 and (0, 0, 0) not in ids
    assert sorted({ident[1] for ident in ids}) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="every ID under the codes"):
        assign_unique_codes(torch.zeros(70, 2, dtype=torch.long), torch.arange(4.0).repeat(70, 1), set(), 16)


def test_quantizer_statistics_by_hand():
    codes = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 1]])
    usage = code_usage(codes, [4, 2])
    assert usage[0]["used"] == 2 and usage[0]["usage"] == 0.5 and abs(usage[0]["perplexity"] - 2.0) < 1e-6
    assert usage[1]["used"] == 2
    assert collision_rate([(0, 1), (0, 1), (1, 0), (1, 1)]) == 0.5
    points = torch.cat([torch.zeros(10, 2), torch.ones(10, 2) * 5])
    centroids = kmeans(points, 2, 10, torch.Generator().manual_seed(0))
    assert sorted(centroids.sum(-1).tolist()) == [0.0, 10.0]


def test_embedding_cache_keeps_finished_shards_when_a_run_fails(tmp_path, monkeypatch):
    texts = [f'Describe a movie:\n{{"title": "Film {i}"}}' for i in range(6)]
    calls = []
    real_encode = embedding.TextEncoder.encode

    def failing_second_shard(self, batch, **kwargs):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real_encode(self, batch, **kwargs)

    monkeypatch.setattr(embedding, "SHARD_SIZE", 3)
    monkeypatch.setattr(embedding.TextEncoder, "encode", failing_second_shard)
    with pytest.raises(RuntimeError, match="killed"):
        EmbeddingCache(cache_dir=tmp_path).embed(texts, progress=False)
    monkeypatch.setattr(embedding.TextEncoder, "encode", real_encode)
    cache = EmbeddingCache(cache_dir=tmp_path)
    assert len(cache._vectors) == 3  # the first shard survived
    vectors = cache.embed(texts, progress=False)
    assert vectors.shape == (6, 384)
    assert len(list(cache.folder.glob("shard-*.pt"))) == 2
    # A second run embeds nothing.
    monkeypatch.setattr(embedding.TextEncoder, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert torch.equal(EmbeddingCache(cache_dir=tmp_path).embed(texts, progress=False), vectors)


def test_add_items_that_fails_after_embedding_loses_no_embedding(fitted, tmp_path, monkeypatch):
    """The embeddings go to the cache before the items get IDs: a call that fails after embedding (here the IDs
    run out) is repeated without embedding anything, in this tokenizer or a fresh one; a pipeline-style call with
    ``cache_embeddings=False`` writes no shard."""
    from tokenization_recbase import item_indexing_recbase

    fitted[0].save_pretrained(tmp_path / "tokenizer")  # work on a copy: the fixture is shared
    tokenizer = RecBaseTokenizer.from_pretrained(tmp_path / "tokenizer")
    keys = [f"books/{i}" for i in range(4)]
    texts = [f'Describe a book:\n{{"title": "Book {i}"}}' for i in range(4)]
    real_assign = item_indexing_recbase.assign_unique_codes

    def exhausted(*args, **kwargs):
        raise ValueError("no free ID left")

    monkeypatch.setattr(item_indexing_recbase, "assign_unique_codes", exhausted)
    with pytest.raises(ValueError, match="no free ID left"):
        tokenizer.add_items(keys, texts=texts, cache_dir=tmp_path / "cache")
    assert "books/0" not in tokenizer.item_codes
    monkeypatch.setattr(item_indexing_recbase, "assign_unique_codes", real_assign)
    monkeypatch.setattr(embedding.TextEncoder, "encode", lambda *a, **k: pytest.fail("embedded again"))
    codes = tokenizer.add_items(keys, texts=texts, cache_dir=tmp_path / "cache")
    fresh = RecBaseTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert fresh.add_items(keys, texts=texts, cache_dir=tmp_path / "cache") == codes
    shards = sorted((tmp_path / "cache").rglob("shard-*.pt"))
    monkeypatch.undo()
    fresh.add_items(
        ["books/4"], texts=["Describe a book: a new one"], cache_dir=tmp_path / "cache", cache_embeddings=False
    )
    assert sorted((tmp_path / "cache").rglob("shard-*.pt")) == shards


def test_a_downloaded_text_encoder_name_is_never_imported(tiny_run, tmp_path):
    """A published tokenizer_config.json names its text encoder; only a local folder or a known encoder
    package is accepted, so a module name planted there is refused before anything is imported."""
    import shutil
    import sys

    folder = tmp_path / "planted"
    shutil.copytree(tiny_run["tokenizer"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "text_encoder": "this"}))
    tokenizer = RecBaseTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="'this' is neither a local folder nor a known encoder package"):
        tokenizer.add_items(["music/new"], texts=["a new song"])
    assert "this" not in sys.modules


@pytest.mark.parametrize("missing", ["items.safetensors", "tokenizer_config.json"])
def test_a_folder_without_one_of_its_files_is_refused(tiny_run, tmp_path, missing):
    import shutil

    folder = tmp_path / "incomplete"
    shutil.copytree(tiny_run["tokenizer"], folder)
    (folder / missing).unlink()
    with pytest.raises(ValueError, match=f"incomplete: {missing} is missing"):
        RecBaseTokenizer.from_pretrained(folder)
    assert len(RecBaseTokenizer(codebook_sizes=[4, 4]).item_codes) == 0  # a new, empty tokenizer is still fine


def test_embedding_shows_one_bar_with_the_real_total(tmp_path, monkeypatch):
    """Shards are written every SHARD_SIZE texts, but the user sees one bar counting all of them."""
    bars = []

    class RecordingBar:
        def __init__(self, total, **kwargs):
            self.total, self.count = total, 0
            bars.append(self)

        def update(self, count):
            self.count += count

        def close(self):
            pass

    monkeypatch.setattr(embedding, "SHARD_SIZE", 2)
    monkeypatch.setattr(embedding, "tqdm", RecordingBar)
    texts = [f'Describe a song:\n{{"title": "Song {i}"}}' for i in range(5)]
    EmbeddingCache(cache_dir=tmp_path).embed(texts)
    assert [(bar.total, bar.count) for bar in bars] == [(5, 5)]


def test_removed_items_free_their_ids_and_a_new_domain_its_alignment(tiny_run):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    before = dict(tokenizer.item_codes)
    texts = ['Describe a book:\n{"title": "Dune"}', 'Describe a book:\n{"title": "Emma"}']
    codes = tokenizer.add_items(["books/1", "books/2"], texts=texts)
    assert "books" in tokenizer.domain_alignments
    tokenizer.remove_items(["books/1", "books/2"])
    assert dict(tokenizer.item_codes) == before and "books" not in tokenizer.domain_alignments
    assert tokenizer.add_items(["books/1", "books/2"], texts=texts) == codes  # the same IDs were free again
    with pytest.raises(ValueError, match="unknown item key 'books/3'"):
        tokenizer.remove_items(["books/3"])


def test_an_item_given_by_its_fields_is_read_as_the_corpus_reads_it(tiny_run):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    as_string = tokenizer.item_text_from_fields({"title": "Toy Story", "categories": "Animation|Children"}, check=True)
    as_list = tokenizer.item_text_from_fields({"title": "Toy Story", "categories": ["Animation", "Children"]})
    assert as_string == as_list and '"categories": ["Animation", "Children"]' in as_list
    for fields, message in (
        ({}, "hold no text"),
        ({"title": None}, "hold no text"),
        ({"title": "Alien", "genre": "horror"}, r"\['genre'\] are unknown"),
    ):
        with pytest.raises(ValueError, match=message):
            tokenizer.item_text_from_fields(fields, check=True)
        with pytest.raises(ValueError, match=message):
            tokenizer.add_items(["films/new"], texts=[fields])
    assert "films/new" not in tokenizer.item_codes
