"""Invariants of the zero-shot recipes: relabelled windows, content inputs, the dense head, PMI scoring,
catalogue counts, held-out validation, and the selection command end to end."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import pipeline

from modeling_recbase import ItemRanker, RecBaseConfig, RecBaseForCausalLM
from modeling_recbase.ranking_recbase import empty_history_log_likelihood
from tests.conftest import TINY_SIZE, tiny_pretraining_flags
from tokenization_recbase import RecBaseTokenizer
from training.pretraining_data import PretrainingCollator, relabel_codes, training_windows
from training.protocols import RANDOM, RECBASE_PRIOR

PLAIN = dict(dense_head=False, content_inputs=False, popularity_buckets=0)  # the generative model alone


def score_candidates(model, tokenizer, histories, candidates, **policy) -> list[list[float]]:
    """Scores under the model's ranking policy, with ``policy`` fields changed."""
    return ItemRanker(model, tokenizer, dataclasses.replace(model.ranking_policy, **policy)).score(
        histories, candidates
    )


def recipe_model(tokenizer: RecBaseTokenizer, **fields) -> RecBaseForCausalLM:
    """A small model on the tiny tokenizer's layout (the plain generative model unless ``fields`` add a head), its
    code vectors taken from the tokenizer's quantizer."""
    config = RecBaseConfig.from_preset(
        "recbase-tiny", **{**TINY_SIZE, "latent_dim": tokenizer.quantizer.config["latent_dim"], **PLAIN, **fields}
    )
    model = RecBaseForCausalLM(config).eval()
    model.model.code_latents.weight.data.copy_(tokenizer.code_latent_table(config.vocab_size))
    return model


@pytest.fixture
def tokenizer(tiny_run):
    return RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])


def test_relabelling_keeps_which_positions_share_codes_and_inverts_exactly(tokenizer):
    collator = PretrainingCollator(tokenizer, relabel_share=1.0)
    input_ids = torch.tensor(tokenizer.encode_history([f"music/{i}" for i in (0, 5, 0, 9, 5)])["input_ids"])
    relabelled, permutations = relabel_codes(
        input_ids, collator.level_offsets, collator.level_sizes, torch.Generator().manual_seed(1)
    )
    assert relabelled[0] == tokenizer.bos_token_id
    assert torch.equal(relabelled[:, None] == relabelled[None], input_ids[:, None] == input_ids[None])
    restored = relabelled.clone()
    for offset, size, permutation in zip(collator.level_offsets, collator.level_sizes, permutations):
        in_level = (relabelled >= offset) & (relabelled < offset + size)
        restored[in_level] = offset + permutation.argsort()[relabelled[in_level] - offset]
    assert torch.equal(restored, input_ids)
    # In a batch, labels follow the relabelled tokens and the content ids keep the true ones.
    batch = collator([{"input_ids": input_ids.tolist(), "domain": "music"}])
    assert torch.equal(batch["content_ids"][0], input_ids)
    assert torch.equal(batch["labels"], batch["input_ids"])


def test_a_zero_content_projection_gives_the_same_logits_as_none(tokenizer):
    with_content = recipe_model(tokenizer, content_inputs=True)
    assert with_content.model.content_proj.weight.abs().sum() == 0  # starts at zero
    without = recipe_model(tokenizer)
    without.load_state_dict(with_content.state_dict(), strict=False)
    input_ids = tokenizer.encode_history([["music/1", "music/2"], ["films/3"]], return_tensors="pt")
    torch.testing.assert_close(with_content(**input_ids).logits, without(**input_ids).logits)
    with torch.no_grad():
        with_content.model.content_proj.weight.normal_()
    assert not torch.allclose(with_content(**input_ids).logits, without(**input_ids).logits)


def test_the_dense_score_is_the_cosine_it_claims(tokenizer):
    fields = dict(
        dense_head=True, item_vector_size=384, dense_temperature=0.5, dense_history_items=2, dense_history_decay=0.25
    )
    model = recipe_model(tokenizer, **fields)
    with torch.no_grad():
        model.dense_proj.weight.normal_()
    history, candidates = ["music/1", "music/6", "music/9"], ["music/2", "music/7", "music/11"]
    stored = torch.randn(6, 384)
    tokenizer.set_item_vectors(dict(zip(history + candidates, stored)))
    scores = score_candidates(model, tokenizer, [history], [candidates])[0]
    encoded = tokenizer.encode_history(history, return_tensors="pt")
    hidden = model.model(**encoded).last_hidden_state[0, -1]
    unit = F.normalize(stored[:3].half().float(), dim=-1)  # stored as float16, as saved
    prior = unit[-1] + 0.25 * unit[-2]  # the last two items, the older one weighted by the decay
    candidate_latents = stored[3:].half().float()
    # The cosine, less its mean over the domain's items (the same for every candidate of the domain).
    centre = F.normalize(tokenizer.item_vectors(tokenizer.domain_items("music")), dim=-1).mean(0)
    query = prior + model.dense_proj(hidden)
    cosine = F.cosine_similarity(query[None], candidate_latents, dim=-1)
    expected = (cosine - F.normalize(query, dim=-1) @ centre) / 0.5
    torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-5, rtol=1e-5)
    # At init the dense head is the prior alone.
    fresh = recipe_model(tokenizer, **fields)
    at_init = F.cosine_similarity(prior[None], candidate_latents, dim=-1) - F.normalize(prior, dim=-1) @ centre
    torch.testing.assert_close(
        torch.tensor(score_candidates(fresh, tokenizer, [history], [candidates])[0]),
        at_init / 0.5,
        atol=1e-5,
        rtol=1e-5,
    )
    # Full ranking with the dense score alone ranks every allowed item by that same score.
    ranked = ItemRanker(model, tokenizer).rank([history], candidates, top_k=3, exclude_history=False)[0]
    assert [key for key, _ in ranked] == [candidates[i] for i in expected.argsort(descending=True).tolist()]


def test_item_vectors_sit_at_each_item_end_and_fall_back_to_code_vectors(tokenizer, tmp_path):
    # The same items and quantizer, no stored vectors yet.
    bare = RecBaseTokenizer(codebook_sizes=[4, 4, 4], disambiguation_size=2)
    bare.set_items(dict(tokenizer.item_codes), {key: tokenizer.item_text(key) for key in tokenizer.item_codes})
    bare.set_quantizer(tokenizer.quantizer, tokenizer.domain_alignments)
    tokenizer = bare
    stored = {"music/1": torch.ones(8), "music/2": torch.full((8,), 2.0)}
    tokenizer.set_item_vectors(stored)
    encoded = tokenizer.encode_history(
        [["music/1", "music/2"], ["music/2"]], return_tensors="pt", return_item_vectors=True
    )
    vectors, tokens = encoded["item_vectors"], tokenizer.tokens_per_item  # (2, 1 + 2 * tokens, 8)
    assert torch.equal(vectors[0, tokens], stored["music/1"]) and torch.equal(vectors[0, -1], stored["music/2"])
    assert torch.equal(vectors[1, -1], stored["music/2"])  # left padding: the last item ends at the last position
    assert int((vectors.abs().sum(-1) > 0).sum()) == 3
    # An item without a stored vector gets the sum of its code vectors (its quantized latent).
    table = tokenizer.code_latent_table(3 + 4 * 3 + 2)
    torch.testing.assert_close(
        tokenizer.item_vectors(["films/3"])[0], table[tokenizer.item_token_ids(["films/3"])[0]].sum(0)
    )
    tokenizer.save_pretrained(tmp_path)
    reloaded = RecBaseTokenizer.from_pretrained(tmp_path)
    assert torch.equal(
        reloaded.item_vectors(["music/1", "music/2", "films/3"]),
        tokenizer.item_vectors(["music/1", "music/2", "films/3"]),
    )


def test_the_calibrated_score_is_the_log_likelihood_minus_the_empty_history_one(tokenizer):
    plain = recipe_model(tokenizer)
    history, candidates = [["music/1", "music/6"]], [["music/2", "films/7"]]
    log_likelihood = torch.tensor(score_candidates(plain, tokenizer, history, candidates))
    prior = empty_history_log_likelihood(plain, tokenizer.item_token_ids(candidates[0]), tokenizer.bos_token_id)
    # The prior is the log-probability of the codes after <bos> alone, token by token.
    bos_and_item = torch.cat([torch.tensor([tokenizer.bos_token_id]), tokenizer.item_token_ids(["music/2"])[0]])
    log_probs = plain(bos_and_item[None]).logits[0, :-1].log_softmax(-1)
    torch.testing.assert_close(prior[0], log_probs.gather(-1, bos_and_item[1:, None]).sum())
    calibrated = score_candidates(plain, tokenizer, history, candidates, calibrated_code_score=True)
    torch.testing.assert_close(torch.tensor(calibrated), log_likelihood - prior[None])


def test_catalogue_counts_change_nothing_when_absent_and_bias_when_given(tokenizer):
    model = recipe_model(tokenizer, dense_head=True, item_vector_size=384, popularity_buckets=4)
    with torch.no_grad():  # as if trained: bucket 0 ("count unknown") is the padding row and stays zero
        model.popularity_bias.weight[1:].normal_()
    no_buckets = recipe_model(tokenizer, dense_head=True, item_vector_size=384)
    no_buckets.load_state_dict({k: v for k, v in model.state_dict().items() if "popularity" not in k})
    history, candidates = [["music/1", "music/6"]], [["music/2", "music/7", "music/3"]]
    assert score_candidates(model, tokenizer, history, candidates) == score_candidates(
        no_buckets, tokenizer, history, candidates
    )
    tokenizer.set_item_counts({"music/2": 50, "music/7": 1, "music/3": 10})
    assert tokenizer.popularity_buckets(["music/7", "music/3", "music/2", "films/1"], 4).tolist() == [1, 2, 3, 0]
    assert score_candidates(model, tokenizer, history, candidates) != score_candidates(
        no_buckets, tokenizer, history, candidates
    )


def test_dense_training_draws_negatives_from_the_window_domain(tokenizer):
    windows = training_windows(
        tokenizer, [["films/1", "films/2", "films/3"], ["music/4", "music/5"]], max_history_items=20
    )
    collator = PretrainingCollator(tokenizer, num_negatives=16)
    batch = collator([windows[0], windows[1]])
    films = {tuple(row) for row in tokenizer.item_token_ids(tokenizer.domain_items("films")).tolist()}
    assert batch["negative_ids"].shape == (2, 16, tokenizer.tokens_per_item)
    assert {tuple(row) for row in batch["negative_ids"][0].tolist()} <= films
    model = recipe_model(tokenizer, dense_head=True, content_inputs=True, item_vector_size=384)
    output = model.train()(**batch)
    assert output.dense_loss > 0 and torch.isclose(output.loss, output.code_loss + output.dense_loss)


def test_held_out_validation_keeps_the_best_step(tiny_run, tmp_path):
    from training import pretrain

    output_dir = tmp_path / "run"
    pretrain.main(
        [
            *tiny_pretraining_flags(tiny_run, output_dir, "music"),
            "--per_device_batch_size",
            "4",
            "--max_steps",
            "6",
            "--dense_head",
            "--content_inputs",
            "--validation_domains",
            "films",
            "--validate_every",
            "3",
            "--validation_users",
            "10",
            "--validation_negatives",
            "5",
            "--checkpointing_steps",
            "100",
        ]
    )
    log = json.loads((output_dir / "validation.json").read_text())
    assert [entry["step"] for entry in log["history"]] == [0, 3, 6]
    best = max(log["history"], key=lambda entry: entry["ndcg@10"])
    assert log["best"] == {"step": best["step"], "metric": "ndcg@10", "ndcg@10": best["ndcg@10"]}
    assert all({"recall@10", "auc"} <= set(entry) for entry in log["history"])
    # The saved folder recommends through the pipeline: code and dense heads on the domain it was trained on,
    # the dense head alone on the held-out one, and a LoRA adapts it.
    recommend = pipeline("next-item-generation", model=str(output_dir), trust_remote_code=True)
    assert recommend.model.ranking_policy.code_score_domains == ["music"]
    for domain, history in (("music", ["music/1", "music/5"]), ("films", ["films/2", "films/6"])):
        items = [row["item"] for row in recommend({"history": history}, top_k=5, domain=domain)]
        assert len(set(items)) == 5 and all(key.startswith(f"{domain}/") and key not in history for key in items)
    pretrain.main(
        [
            "--corpus_dir",
            str(tiny_run["corpus"]),
            "--init_from",
            str(output_dir),
            "--output_dir",
            str(tmp_path / "lora"),
            "--domains",
            "films",
            "--lora_rank",
            "2",
            "--max_steps",
            "2",
            "--per_device_batch_size",
            "4",
            "--checkpointing_steps",
            "100",
        ]
    )
    assert (tmp_path / "lora" / "adapter_config.json").is_file()


def test_the_selection_command_runs_end_to_end(tiny_run, tmp_path):
    from training import select

    results = select.main(
        [
            "--output_dir",
            str(tmp_path / "selection"),
            "--corpus_dir",
            str(tiny_run["corpus"]),
            "--domains",
            "music",
            "films",
            "--test_domains",
            "--validation_domains",
            "films",
            "--in_domain",
            "music",
            "--recipes",
            "code head, all domains",
            "dense head + content inputs",
            "--codebook_sizes",
            "4",
            "4",
            "4",
            "--disambiguation_size",
            "4",
            "--max_steps",
            "4",
            "--validate_every",
            "2",
            "--eval_users",
            "10",
            "--negatives",
            "5",
        ]
    )
    rows = results["rows"]
    assert results["folds"] == [["films"]] and set(rows["dense head + content inputs"]["best_step"]) == {"films"}
    assert (tmp_path / "selection" / "held-out-films" / "item-tokenizer" / "tokenizer_config.json").is_file()
    assert {"code head, all domains", "dense head + content inputs", RANDOM} <= set(rows)
    assert all(0 <= rows[name]["domains"]["films"]["auc"] <= 1 for name in rows)
    table = (tmp_path / "selection" / "selection.md").read_text()
    recipe_table, gain_table = table.split("Trained minus the prior")
    assert recipe_table.strip().count("\n") == len(rows) + 1  # a header, its rule and a line per row
    assert all(f"| {name} | " in gain_table for name in ("code head, all domains", "dense head + content inputs"))
    # The gain over the training-free prior, measured on the same users in the same run.
    dense, prior = rows["dense head + content inputs"]["domains"]["films"], rows[RECBASE_PRIOR]["domains"]["films"]
    gain = results["gains_over_prior"]["dense head + content inputs"]
    assert gain["domains"]["films"]["ndcg@10"] == pytest.approx(dense["ndcg@10"] - prior["ndcg@10"])
    assert gain["worst"] == gain["domains"]["films"]


def test_a_rotation_part_way_through_gives_its_tables():
    """After the first fold only its held-out domain is measured: the tables show the others as "-", and the gain
    is over the measured domains."""
    from training import select

    metrics = {"auc": 0.6, "gauc": 0.6, "ndcg@10": 0.1, "recall@10": 0.2}
    results = {
        "validation_domains": ["books", "wines"],
        "in_domain": "films",
        "rows": {
            RECBASE_PRIOR: {"domains": {"books": metrics, "films": metrics}},
            "recipe": {"settings": {}, "best_step": {"books": 0}, "domains": {"books": {**metrics, "auc": 0.7}}},
        },
    }
    gain = select.gains_over_prior(results)["recipe"]
    assert set(gain["domains"]) == {"books"} and gain["worst"]["auc"] == pytest.approx(0.1)
    table = select.selection_markdown(results)
    assert "| recipe | 0 | 0.7000 / 0.6000 / 0.1000 / 0.2000 | - | 0.7000 | - | - |" in table
