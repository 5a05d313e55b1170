"""A user's own catalogue at scale: per-domain item tables, the safetensors items file (and a previous release's
files), refitting a domain's frame, and pipeline calls that are safe from many threads and undo what they indexed
when they fail."""

import json
import shutil
import threading

import pytest
import torch
from safetensors import safe_open
from transformers import pipeline

from tokenization_recbase import RecBaseTokenizer, ResidualQuantizer, align, fit_domain_alignment


def roomy_tokenizer() -> RecBaseTokenizer:
    """A tokenizer with a random quantizer and room for thousands of items (the tiny run's has 128 IDs), holding two
    domains of 40 items."""
    tokenizer = RecBaseTokenizer(codebook_sizes=[8, 8, 8], disambiguation_size=64)
    torch.manual_seed(0)  # the same quantizer on every call
    quantizer = ResidualQuantizer(input_dim=384, hidden_dims=[16], latent_dim=8, codebook_sizes=[8, 8, 8])
    tokenizer.set_quantizer(quantizer, {})
    for seed, domain in enumerate(("music", "films")):
        add_synthetic_domain(tokenizer, domain, 40, seed=seed)
    return tokenizer


@pytest.fixture
def tokenizer():
    return roomy_tokenizer()


def add_synthetic_domain(tokenizer: RecBaseTokenizer, domain: str, size: int, seed: int = 1) -> list[str]:
    keys = [f"{domain}/{index}" for index in range(size)]
    embeddings = torch.randn(size, 384, generator=torch.Generator().manual_seed(seed))
    tokenizer.add_items(keys, texts=[f"item {index} of {domain}" for index in range(size)], embeddings=embeddings)
    return keys


def per_key(tokenizer: RecBaseTokenizer, keys: list[str]) -> dict[str, torch.Tensor]:
    """What each lookup gives one key at a time: the reference for lookups of many keys at once."""
    return {
        "vectors": torch.cat([tokenizer.item_vectors([key]) for key in keys]),
        "token_ids": torch.cat([tokenizer.item_token_ids([key]) for key in keys]),
        "buckets": torch.cat([tokenizer.popularity_buckets([key], 10) for key in keys]),
        "centres": torch.cat([tokenizer.domain_centres([key]) for key in keys]),
    }


def test_lookups_of_a_whole_domain_mixed_domains_and_after_removals_agree_key_by_key(tokenizer):
    add_synthetic_domain(tokenizer, "books", 300)
    tokenizer.set_item_counts({f"books/{index}": index % 7 for index in range(0, 300, 2)})
    tokenizer.remove_items([f"books/{index}" for index in range(5, 300, 11)])  # rows in the middle go
    books = tokenizer.domain_items("books")
    assert books == [f"books/{index}" for index in range(300) if index % 11 != 5]
    mixed = ["music/3", *books[:40:3], "films/7", "books/0"]
    for keys in (books, mixed, books[::-1]):
        reference = per_key(tokenizer, keys)
        assert torch.equal(tokenizer.item_vectors(keys), reference["vectors"])
        assert torch.equal(tokenizer.item_token_ids(keys), reference["token_ids"])
        assert torch.equal(tokenizer.popularity_buckets(keys, 10), reference["buckets"])
        assert torch.equal(tokenizer.domain_centres(keys), reference["centres"])
    # Buckets as defined: 1 + the share of the domain's counted items with a smaller count, in 10 steps.
    counted = sorted(count for key, count in tokenizer.item_counts.items() if key.startswith("books/"))
    for key in books[:30]:
        expected = 0
        if key in tokenizer.item_counts:
            below = sum(count < tokenizer.item_counts[key] for count in counted) / len(counted)
            expected = 1 + min(9, int(below * 10))
        assert int(tokenizer.popularity_buckets([key], 10)) == expected
    centre = torch.nn.functional.normalize(tokenizer.item_vectors(books), dim=-1).mean(0)
    assert torch.allclose(tokenizer.domain_centres(books[:1])[0], centre)


def test_the_items_file_round_trips_and_is_safetensors(tokenizer, tmp_path):
    add_synthetic_domain(tokenizer, "books", 50)
    tokenizer.set_item_counts({"books/3": 9, "music/1": 4})
    tokenizer.save_pretrained(tmp_path / "saved")
    names = {path.name for path in (tmp_path / "saved").iterdir()}
    assert {"items.safetensors", "quantizer.safetensors"} <= names
    assert not any(name.endswith((".pt", ".pkl", ".bin")) or name == "item_table.json" for name in names)
    with safe_open(str(tmp_path / "saved" / "items.safetensors"), framework="pt") as handle:
        assert {"codes", "vectors", "key_bytes", "text_bytes"} <= set(handle.keys())
    again = RecBaseTokenizer.from_pretrained(tmp_path / "saved")
    assert dict(again.item_codes) == dict(tokenizer.item_codes)
    assert dict(again.item_counts) == dict(tokenizer.item_counts)
    keys = list(tokenizer.item_codes)
    assert [again.item_text(key) for key in keys] == [tokenizer.item_text(key) for key in keys]
    assert torch.equal(again.item_vectors(keys), tokenizer.item_vectors(keys))
    assert set(again.domain_alignments) == set(tokenizer.domain_alignments) == {"music", "films", "books"}
    for domain, alignment in tokenizer.domain_alignments.items():
        assert all(torch.equal(again.domain_alignments[domain][part], alignment[part]) for part in alignment)
    state = tokenizer.quantizer.state_dict()
    assert all(torch.equal(again.quantizer.state_dict()[name], state[name]) for name in state)
    assert again.add_items(["books/new"], embeddings=torch.ones(1, 384)) == tokenizer.add_items(
        ["books/new"], embeddings=torch.ones(1, 384)
    )


def write_previous_release_files(tokenizer: RecBaseTokenizer, folder) -> None:
    """The files a previous release saved: ``item_table.json``, ``item_vectors.pt`` and ``quantizer.pt``."""
    tokenizer.save_pretrained(folder)
    keys = list(tokenizer.item_codes)
    table = {
        key: {
            "codes": list(tokenizer.item_codes[key]),
            "text": tokenizer.item_text(key),
            **({"count": tokenizer.item_counts[key]} if key in tokenizer.item_counts else {}),
        }
        for key in keys
    }
    (folder / "item_table.json").write_text(json.dumps({"items": table}))
    torch.save({"keys": keys, "vectors": tokenizer.item_vectors(keys).half()}, folder / "item_vectors.pt")
    quantizer = tokenizer.quantizer
    torch.save(
        {
            "config": quantizer.config,
            "state_dict": quantizer.state_dict(),
            "domain_alignments": dict(tokenizer.domain_alignments),
        },
        folder / "quantizer.pt",
    )
    (folder / "items.safetensors").unlink()
    (folder / "quantizer.safetensors").unlink()


def test_a_previous_release_folder_loads_the_same_and_its_next_save_is_the_new_format(tiny_run, tokenizer, tmp_path):
    tokenizer.set_item_counts({"music/2": 5})
    tokenizer.remove_items(["films/3"])
    old = tmp_path / "old"
    write_previous_release_files(tokenizer, old)
    loaded = RecBaseTokenizer.from_pretrained(old)
    keys = list(tokenizer.item_codes)
    assert dict(loaded.item_codes) == dict(tokenizer.item_codes) and dict(loaded.item_counts) == {"music/2": 5}
    assert torch.equal(loaded.item_vectors(keys), tokenizer.item_vectors(keys))
    assert set(loaded.domain_alignments) == {"music", "films"}
    loaded.save_pretrained(old)
    names = {path.name for path in old.iterdir()}
    assert {"items.safetensors", "quantizer.safetensors"} <= names
    assert not names & {"item_table.json", "item_vectors.pt", "quantizer.pt"}
    assert dict(RecBaseTokenizer.from_pretrained(old).item_codes) == dict(tokenizer.item_codes)
    # And the whole model folder of a previous release recommends as the new one does.
    folder = tmp_path / "old-model"
    shutil.copytree(tiny_run["checkpoint"], folder)
    write_previous_release_files(RecBaseTokenizer.from_pretrained(tiny_run["checkpoint"]), folder)
    history = {"history": ["music/1", "music/5"]}
    new = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    previous = pipeline("next-item-generation", model=str(folder), trust_remote_code=True)
    assert previous(history, top_k=5) == new(history, top_k=5)


@pytest.mark.parametrize("size", [5, 383, 384, 1000])
def test_the_alignment_is_a_rotation_for_domains_smaller_and_larger_than_the_embedding(size):
    embeddings = torch.randn(size, 384, generator=torch.Generator().manual_seed(size))
    alignment = fit_domain_alignment(embeddings)
    rotation = alignment["rotation"]
    assert rotation.shape == (384, 384)
    assert torch.allclose(rotation.T @ rotation, torch.eye(384), atol=1e-4)
    aligned = align(embeddings, alignment)
    # Distances are kept, and the first axes carry the most variance.
    assert torch.allclose(
        torch.cdist(aligned[:5], aligned[:5]), torch.cdist(embeddings[:5], embeddings[:5]), atol=1e-3
    )
    variances = aligned.var(0)
    assert variances[0] >= variances[min(size, 384) - 2]


def test_a_frame_fitted_on_a_few_items_warns_and_refitting_gives_what_indexing_all_at_once_does(caplog):
    # Items in 8 clusters of unequal sizes: principal axes that stand out (as a catalogue's do), not isotropic noise
    # whose axes any rounding turns.
    generator = torch.Generator().manual_seed(3)
    centres = 3 * torch.randn(8, 384, generator=generator)
    cluster = (torch.arange(400) ** 2) % 8
    embeddings = centres[cluster] + 0.1 * torch.randn(400, 384, generator=generator)
    keys = [f"books/{index}" for index in range(400)]
    at_once = roomy_tokenizer()
    at_once.add_items(keys, embeddings=embeddings)
    in_steps = roomy_tokenizer()
    in_steps.add_items(keys[:2], embeddings=embeddings[:2])
    with caplog.at_level("WARNING"):
        in_steps.add_items(keys[2:], embeddings=embeddings[2:])
    assert "refit_domain('books')" in caplog.text
    frames = [tokenizer.domain_alignments["books"]["mean"] for tokenizer in (at_once, in_steps)]
    assert not torch.allclose(*frames, atol=1e-3)  # the first two items fixed the frame
    in_steps.set_item_counts({"books/7": 3})
    in_steps.refit_domain("books")
    assert torch.allclose(
        in_steps.domain_alignments["books"]["mean"], at_once.domain_alignments["books"]["mean"], atol=1e-3
    )
    # The axes that stand out (the clusters') are the same axes, sign included; float16 rounding of the stored
    # vectors may turn the near-equal noise axes, so IDs are not compared.
    axes = [tokenizer.domain_alignments["books"]["rotation"][:, :7] for tokenizer in (at_once, in_steps)]
    assert torch.allclose((axes[0] * axes[1]).sum(0), torch.ones(7), atol=1e-3)
    assert in_steps.domain_items("books") == keys and dict(in_steps.item_counts) == {"books/7": 3}


@pytest.fixture
def recommend(tiny_run):
    return pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)


def test_25_threads_with_items_given_by_text_get_what_calls_one_at_a_time_get(recommend):
    histories = [
        {"history": ["music/1", {"text": f"Describe a music: a song heard by listener {user % 5}"}]}
        for user in range(25)
    ]
    before = dict(recommend.tokenizer.item_codes)
    expected = [recommend(history, top_k=5) for history in histories]
    results, errors = [None] * 25, []

    def call(index: int) -> None:
        try:
            results[index] = recommend(histories[index], top_k=5)
        except Exception as error:  # noqa: BLE001 - every error of every thread is the test's failure
            errors.append(error)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == expected
    assert dict(recommend.tokenizer.item_codes) == before
    assert not any("text-" in row["item"] for rows in results for row in rows)


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_a_failed_batch_call_indexes_nothing_whatever_the_batch_size(recommend, batch_size):
    before = dict(recommend.tokenizer.item_codes)
    inputs = [
        {"history": ["music/1", {"text": "Describe a music: a brand new song"}]},
        {"history": ["music/2", {"text": "Describe a music: another new song"}]},
        {"history": ["music/404"]},  # unknown: the call fails here
    ]
    with pytest.raises(ValueError, match="music/404"):
        recommend(inputs, top_k=3, batch_size=batch_size, index_new_items=True)
    assert dict(recommend.tokenizer.item_codes) == before


def test_an_item_given_by_the_text_of_an_indexed_item_is_that_item(recommend):
    tokenizer = recommend.tokenizer
    before = dict(tokenizer.item_codes)
    by_key = recommend({"history": ["music/3", "music/7"]}, top_k=10)
    by_text = recommend({"history": ["music/3", {"text": tokenizer.item_text("music/7")}]}, top_k=10)
    assert by_text == by_key and "music/7" not in [row["item"] for row in by_text]
    assert dict(tokenizer.item_codes) == before


def test_a_refused_set_items_adds_nothing(tokenizer):
    before = dict(tokenizer.item_codes)
    taken = next(iter(before.values()))
    with pytest.raises(ValueError, match="would share the ID"):
        tokenizer.set_items({"books/1": (1, 2, 3, 0), "books/2": taken}, {})
    with pytest.raises(ValueError, match="would share the ID"):
        tokenizer.set_items({"books/1": (1, 2, 3, 0), "books/2": (1, 2, 3, 0)}, {})
    assert dict(tokenizer.item_codes) == before and "books" not in tokenizer.domains
