"""The next-item pipeline from a saved folder, and LoRA adaptation (PEFT-style invariants)."""

import json
import logging
import re

import pytest
import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import pipeline

from modeling_recbase import RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer
from training import pretrain
from training.arguments import LORA_TARGET_MODULES
from training.checkpoint import load_checkpoint

UNSEEN_TEXTS = [
    'Describe a music:\n{"title": "late night jazz piano trio"}',
    'Describe a music:\n{"title": "smoky jazz club saxophone"}',
]


def test_pipeline_from_a_saved_folder_outside_the_repo(tiny_run, run_outside_repo):
    output = run_outside_repo(f"""
import json
from transformers import pipeline
recommend = pipeline("next-item-generation", model={str(tiny_run["checkpoint"])!r}, trust_remote_code=True)
keys = recommend({{"history": ["music/1", "music/5"]}}, top_k=5, domain="music")
texts = recommend({{"history": [{{"text": t}} for t in {UNSEEN_TEXTS!r}]}}, top_k=4, domain="music",
                  index_new_items=True)
batch = recommend([{{"history": ["music/1"]}}, {{"history": ["films/2", "films/6"]}}], top_k=3)
scored = recommend.score_candidates(["music/1"], ["music/2", "music/3", "films/4"])
music = recommend.tokenizer.domain_items("music")
print(json.dumps({{"keys": keys, "texts": texts, "batch": batch, "scored": scored, "music": music}}))
""")
    result = json.loads(output.strip().splitlines()[-1])
    music = set(result["music"])
    assert len(music) == 24 + len(UNSEEN_TEXTS)  # the unseen items were indexed into music on the fly
    for ranked, top_k, history in ((result["keys"], 5, {"music/1", "music/5"}), (result["texts"], 4, set())):
        items = [row["item"] for row in ranked]
        assert len(items) == top_k == len(set(items)) and set(items) <= music and not set(items) & history
        assert all(row["text"] for row in ranked if not row["item"].startswith("music/text-"))
        scores = [row["score"] for row in ranked]
        assert scores == sorted(scores, reverse=True)
    assert [len(rows) for rows in result["batch"]] == [3, 3]
    assert [row["item"] for row in result["scored"]] == ["music/2", "music/3", "films/4"]


def test_pipeline_scores_equal_the_model_dense_score(tiny_run):
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    model, tokenizer = recommend.model, recommend.tokenizer
    scored = recommend.score_candidates(["music/1", "music/2"], ["music/7"])[0]["score"]
    encoded = tokenizer.encode_history(["music/1", "music/2"], return_tensors="pt", return_item_vectors=True)
    query = model(**encoded, return_dense_queries=True).dense_queries[0, -1]
    vector, centre = tokenizer.item_vectors(["music/7"])[0], tokenizer.domain_centres(["music/7"])[0]
    cosine = torch.nn.functional.normalize(vector, dim=0) - centre
    expected = cosine @ torch.nn.functional.normalize(query, dim=0) / model.config.dense_temperature
    assert scored == pytest.approx(expected.item(), abs=1e-4)
    # The best ranked item is the candidate the same model scores highest among all music items.
    best = recommend({"history": ["music/1", "music/2"]}, top_k=1, domain="music", exclude_history=False)[0]
    everything = recommend.score_candidates(["music/1", "music/2"], tokenizer.domain_items("music"))
    assert best["item"] == max(everything, key=lambda row: row["score"])["item"]


@pytest.mark.parametrize(
    "problem, call, error",
    [
        ("empty history", lambda p: p({"history": []}), (ValueError, "non-empty list")),
        ("unknown key", lambda p: p({"history": ["music/404"]}), (ValueError, "unknown item key 'music/404'")),
        (
            "top_k above the domain",
            lambda p: p({"history": ["music/1"]}, top_k=30, domain="music"),
            (ValueError, "top_k=30 but 23 items of domain 'music' can be recommended"),
        ),
        ("texts without a domain", lambda p: p({"history": [{"text": "a song"}]}), (ValueError, "needs domain=")),
        *[
            (
                f"{n} text(s) of a new domain",
                lambda p, n=n: p({"history": [{"text": f"song {i}"} for i in range(n)]}, domain="podcasts"),
                (ValueError, "domain 'podcasts' has no indexed items, so there is nothing to recommend"),
            )
            for n in (1, 2)
        ],
        ("bare list", lambda p: p.preprocess(["music/1"]), (ValueError, '{"history": \\[...\\]}')),
        *[
            (
                f"top_k={k!r}",
                lambda p, k=k: p({"history": ["music/1"]}, top_k=k),
                (ValueError, re.escape(f"top_k must be a positive integer, got {k!r}")),
            )
            for k in (0, -3, 2.5, "5", True)
        ],
        ("no history", lambda p: p({"history": None}), (ValueError, "the history must be a non-empty list")),
        ("a None key", lambda p: p({"history": [None]}), (ValueError, "history entries must be item keys")),
        *[
            (
                f"candidates {c!r}",
                lambda p, c=c: p.score_candidates(["music/1"], c),
                (ValueError, "candidates must be a non-empty list of item keys"),
            )
            for c in ([], [None], "music/2")
        ],
        (
            "unknown candidate",
            lambda p: p.score_candidates(["music/1"], ["music/nope"]),
            (ValueError, "unknown item key 'music/nope'"),
        ),
    ],
)
def test_pipeline_bad_input_is_reported_clearly(tiny_run, problem, call, error):
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    with pytest.raises(error[0], match=error[1]):
        call(recommend)


def test_a_history_longer_than_the_context_is_cut_from_the_left_with_a_warning(tiny_run, caplog):
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    recommend.model.config.max_position_embeddings = 1 + 3 * recommend.tokenizer.tokens_per_item  # room for 2 + 1
    history = [f"music/{i}" for i in range(10)]
    with caplog.at_level(logging.WARNING):
        long_result = recommend({"history": history}, top_k=3, exclude_history=False)
    assert "keeping the most recent 2" in caplog.text
    assert long_result == recommend({"history": history[-2:]}, top_k=3, exclude_history=False)


def test_the_pipeline_reads_as_many_items_as_training_did(tiny_run, caplog):
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    recommend.model.config.max_history_items = 4
    history = [f"music/{i}" for i in range(10)]
    with caplog.at_level(logging.WARNING):
        long_result = recommend({"history": history}, top_k=3, exclude_history=False)
    assert "keeping the most recent 4" in caplog.text
    assert long_result == recommend({"history": history[-4:]}, top_k=3, exclude_history=False)


def test_every_item_of_a_long_history_is_left_out_and_old_texts_are_not_embedded(tiny_run):
    """The model reads the last 4 items; all 10 given are excluded from the results, and the text entries older
    than those 4 are never embedded or indexed."""
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    recommend.model.config.max_history_items = 4
    history = [f"music/{i}" for i in range(10)]
    ranked = [row["item"] for row in recommend({"history": history}, top_k=14)]
    assert len(ranked) == 14 and not set(ranked) & set(history)
    before = set(recommend.tokenizer.item_codes)
    mixed = [{"text": f"an old song number {i}"} for i in range(3)] + ["music/1", {"text": "a new song"}, "music/2"]
    recommend({"history": mixed + ["music/3"]}, top_k=3, index_new_items=True)
    added = set(recommend.tokenizer.item_codes) - before
    assert [recommend.tokenizer.item_text(key) for key in added] == ["a new song"]
    recommend.tokenizer.remove_items(sorted(added))


# ----- LoRA: PEFT-style invariants -----


def lora(model: RecBaseForCausalLM) -> PeftModel:
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=list(LORA_TARGET_MODULES))
    return get_peft_model(model, config)


@pytest.fixture
def history_ids(tiny_run):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    return tokenizer.encode_history([["music/1", "music/5", "music/9"], ["films/3"]], return_tensors="pt")


def test_lora_is_the_identity_at_init_and_training_changes_it(tiny_run, history_ids):
    base = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]).eval()
    reference = base(**history_ids).logits.detach()
    model = lora(RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]))
    torch.testing.assert_close(model(**history_ids).logits, reference)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for _ in range(3):
        labels = history_ids["input_ids"].masked_fill(history_ids["attention_mask"] == 0, -100)
        model(**history_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert not torch.allclose(model(**history_ids).logits, reference, atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(model(**history_ids).logits, reference)


def test_adapter_from_the_training_script_round_trips_and_merges(tiny_run, tmp_path, history_ids):
    adapter_dir, merged_dir = tmp_path / "lora", tmp_path / "merged"
    common = [
        "--init_from",
        str(tiny_run["checkpoint"]),
        "--corpus_dir",
        str(tiny_run["corpus"]),
        "--domains",
        "films",
        "--lora_rank",
        "4",
        "--max_steps",
        "6",
        "--per_device_batch_size",
        "8",
        "--learning_rate",
        "1e-2",
        "--warmup_steps",
        "1",
    ]
    pretrain.main(common + ["--output_dir", str(adapter_dir)])
    pretrain.main(common + ["--output_dir", str(merged_dir), "--merge_lora"])
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= {
        p.name for p in adapter_dir.iterdir()
    }
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size < (
        tiny_run["checkpoint"] / "model.safetensors"
    ).stat().st_size

    auto = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, trust_remote_code=True).eval()
    explicit = PeftModel.from_pretrained(
        RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]), adapter_dir
    ).eval()
    merged = RecBaseForCausalLM.from_pretrained(merged_dir).eval()
    adapted = auto(**history_ids).logits
    base = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]).eval()(**history_ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    torch.testing.assert_close(explicit(**history_ids).logits, adapted)
    torch.testing.assert_close(merged(**history_ids).logits, adapted, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(auto.merge_and_unload()(**history_ids).logits, adapted, rtol=1e-4, atol=1e-4)
    model, tokenizer = load_checkpoint(adapter_dir)  # evaluation loads adapters too
    assert isinstance(model, PeftModel) and len(tokenizer.item_codes) == 48
    # The adapter folder's card is RecBase's, not PEFT's blank one: the task, and the base by a relative path.
    card = ModelCard.load(adapter_dir / "README.md")
    assert card.data.pipeline_tag == "next-item-generation" and card.data.library_name == "peft"
    assert (adapter_dir / card.data.base_model).resolve() == tiny_run["checkpoint"].resolve()
    assert card.text.startswith(f"\n# {adapter_dir.name}\n") and "records no checkpoint selection" in card.text


def test_the_usual_save_pretrained_gives_a_pipeline_folder(tiny_run, tmp_path, run_outside_repo):
    """A user loads a Hub folder, saves model and tokenizer the usual way (no pipeline object), and the new
    folder serves the pipeline in a fresh process outside the repo."""
    saved = tmp_path / "resaved"
    run_outside_repo(f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(tiny_run["checkpoint"])!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(tiny_run["checkpoint"])!r}, trust_remote_code=True)
model.save_pretrained({str(saved)!r})
tokenizer.save_pretrained({str(saved)!r})
""")
    assert (saved / "pipeline_recbase.py").is_file()
    output = run_outside_repo(f"""
from transformers import pipeline
recommend = pipeline("next-item-generation", model={str(saved)!r}, trust_remote_code=True)
print([row["item"] for row in recommend({{"history": ["music/1", "music/5"]}}, top_k=3, domain="music")])
""")
    items = eval(output.strip().splitlines()[-1])
    assert len(set(items)) == 3 and all(key.startswith("music/") for key in items)


def test_candidate_scoring_in_chunks_matches_scoring_at_once(tiny_run, monkeypatch):
    from modeling_recbase import ranking_recbase

    model, tokenizer = load_checkpoint(tiny_run["checkpoint"])
    ranker = ranking_recbase.ItemRanker(model, tokenizer, ranking_recbase.RankingPolicy(code_score_weight=1.0))
    histories = [["music/1", "music/5"], ["films/2", "films/6", "films/9"]]
    candidates = [tokenizer.domain_items("music")[:11], tokenizer.domain_items("films")[:11]]
    at_once = torch.tensor(ranker.score(histories, candidates))
    monkeypatch.setattr(ranking_recbase, "SCORING_ROWS", 6)  # chunks of 3 candidates per user, the last of 2
    chunked = torch.tensor(ranker.score(histories, candidates))
    torch.testing.assert_close(chunked, at_once, rtol=1e-5, atol=1e-5)
    assert at_once.std() > 0


def test_the_domain_comes_from_the_history_and_batches_match_single_calls(tiny_run, caplog):
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    inputs = [{"history": ["films/2", "films/6"]}, {"history": ["music/1"]}, {"history": ["music/3", "films/4"]}]
    single = [recommend(entry, top_k=4) for entry in inputs]
    assert all(row["item"].startswith("films/") for row in single[0])  # no domain given: the history's
    assert all(row["item"].startswith("music/") for row in single[1])
    with caplog.at_level(logging.WARNING):
        mixed = recommend(inputs[2], top_k=4)
    assert all(row["item"].startswith("films/") for row in mixed) and "mixes domains" in caplog.text
    batched = recommend(inputs, top_k=4, batch_size=2)
    assert [[row["item"] for row in rows] for rows in batched] == [[row["item"] for row in rows] for rows in single]


def test_items_given_by_their_fields_get_the_saved_template(tiny_run, tmp_path):
    """Fields become the unified text with the settings saved in tokenizer_config.json, in add_items and in a
    pipeline history alike, so the same fields give the same codes wherever they are indexed."""
    from tokenization_recbase import unified_item_text

    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    tokenizer.item_text_field_limits["title"] = 5
    tokenizer.save_pretrained(tmp_path / "short-titles")
    config = json.loads((tmp_path / "short-titles" / "tokenizer_config.json").read_text())
    assert config["item_text_field_limits"]["title"] == 5 and config["text_max_length"] == 128
    reloaded = RecBaseTokenizer.from_pretrained(tmp_path / "short-titles")
    fields = {"title": "late night jazz", "categories": ["jazz"], "item_type": "music"}
    assert reloaded.item_text_from_fields(fields) == 'Describe a music:\n{"title": "late ", "categories": ["jazz"]}'
    assert reloaded.item_text_from_fields(fields) != unified_item_text(fields)  # the saved limit, not the default
    codes = reloaded.add_items(["music/by-fields"], texts=[fields])
    assert reloaded.item_text("music/by-fields") == reloaded.item_text_from_fields(fields)
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    ranked = recommend({"history": ["music/1", {"title": "smoky jazz club", "item_type": "music"}]}, top_k=3)
    assert len(ranked) == 3 and codes


def test_items_given_by_text_are_indexed_for_the_call_only_unless_asked(tiny_run):
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    before = dict(recommend.tokenizer.item_codes)
    history = ["music/1", {"text": UNSEEN_TEXTS[0]}, {"title": "smoky jazz club", "item_type": "music"}]
    ranked = recommend({"history": history}, top_k=3, exclude_history=False)
    scored = recommend.score_candidates(history, ["music/2", "music/3"])
    assert len(ranked) == 3 and len(scored) == 2
    assert dict(recommend.tokenizer.item_codes) == before  # nothing new is recommendable in later calls
    recommend({"history": history}, top_k=3, index_new_items=True)
    assert len(recommend.tokenizer.item_codes) == len(before) + 2


def test_a_failed_call_leaves_no_item_indexed(tiny_run):
    recommend = pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)
    before = dict(recommend.tokenizer.item_codes)
    with pytest.raises(ValueError, match="top_k=30"):  # fails in ranking, after the text item was indexed
        recommend({"history": ["music/1", {"text": UNSEEN_TEXTS[0]}]}, top_k=30, index_new_items=True)
    assert dict(recommend.tokenizer.item_codes) == before


def test_a_truncated_weights_file_is_named(tiny_run, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "truncated"
    shutil.copytree(tiny_run["checkpoint"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match=f"{re.escape(str(folder))}: a model.safetensors file there cannot be read"):
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)


def test_a_folder_without_its_items_file_says_so(tiny_run, tmp_path):
    import shutil

    folder = tmp_path / "no-items"
    shutil.copytree(tiny_run["checkpoint"], folder)
    (folder / "items.safetensors").unlink()
    with pytest.raises(ValueError, match=r"items.safetensors is missing"):
        load_checkpoint(folder)
    with pytest.raises(ValueError, match=r"items.safetensors is missing"):
        pipeline("next-item-generation", model=str(folder), trust_remote_code=True)


@pytest.mark.parametrize(
    "name, message",
    [
        ("tokenizer_config.json", r"cut: tokenizer_config.json is not valid JSON"),
        ("items.safetensors", r"cut/items.safetensors: not a RecBase items file"),
    ],
)
def test_a_truncated_tokenizer_file_is_named(tiny_run, tmp_path, name, message):
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(tiny_run["checkpoint"], folder)
    (folder / name).write_bytes((folder / name).read_bytes()[:40])
    with pytest.raises(ValueError, match=message):
        RecBaseTokenizer.from_pretrained(folder)
