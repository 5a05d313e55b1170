"""In-domain quality switches: dropout (off in eval, on in train, saved with the config), checkpoint selection
on a rigged validation curve, early stopping, and ``exclude_history`` for the model and every baseline."""

import json

import pytest
import torch
from safetensors.torch import load_file

from modeling_recbase import ItemRanker, RankingPolicy, RecBaseConfig, RecBaseForCausalLM
from tests.conftest import tiny_pretraining_flags
from tokenization_recbase import RecBaseTokenizer
from tokenization_recbase.embedding_cache_recbase import EmbeddingCache
from training import pretrain
from training.baselines import PopularityRecommender, RandomRecommender, TextSimilarityRecommender
from training.corpus import load_corpus
from training.evaluate import RecBaseRecommender
from training.protocols import build_evaluation_set, evaluate_recommender

DROPOUT_FIELDS = ["embedding_dropout", "residual_dropout", "attention_dropout"]


PLAIN_GENERATIVE = dict(dense_head=False, content_inputs=False, popularity_buckets=0, latent_dim=0)


def small_model(**fields) -> RecBaseForCausalLM:
    config = RecBaseConfig.from_preset(
        "recbase-tiny",
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        codebook_sizes=[4, 4, 4],
        disambiguation_size=2,
        **fields,
    )
    return RecBaseForCausalLM(config)


@pytest.mark.parametrize("field", DROPOUT_FIELDS)
def test_dropout_is_off_in_eval_and_on_in_train(field):
    torch.manual_seed(0)
    model = small_model(**{field: 0.5})
    input_ids = torch.randint(3, model.config.vocab_size, (2, 13))
    model.eval()
    assert torch.equal(model(input_ids).logits, model(input_ids).logits)
    model.train()
    assert not torch.allclose(model(input_ids).logits, model(input_ids).logits)


def test_dropout_reloads_with_the_config(tmp_path):
    rates = dict(zip(DROPOUT_FIELDS, (0.1, 0.2, 0.3)))
    small_model(**rates).save_pretrained(tmp_path)
    reloaded = RecBaseForCausalLM.from_pretrained(tmp_path)
    assert {field: getattr(reloaded.config, field) for field in DROPOUT_FIELDS} == rates


def rigged_run(tiny_run, tmp_path, monkeypatch, curve: list[float], patience: int) -> tuple[dict, list[dict], dict]:
    """A real toy pretraining whose validation returns ``curve`` (one value per validation); returns the
    validation log, the weights at each validation, and the saved weights."""
    states: list[dict] = []

    def rigged(model, *args, **kwargs):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"ndcg@10": curve[len(states) - 1]}

    monkeypatch.setattr(pretrain, "validation_metrics", rigged)
    output_dir = tmp_path / "run"
    pretrain.main(
        [
            *tiny_pretraining_flags(tiny_run, output_dir, "music"),
            "--per_device_batch_size",
            "4",
            "--max_steps",
            str(len(curve) - 1),
            "--validation_domains",
            "music",
            "--validate_every",
            "1",
            "--validation_users",
            "5",
            "--validation_negatives",
            "5",
            "--early_stopping_patience",
            str(patience),
            "--learning_rate",
            "1e-2",
            "--checkpointing_steps",
            "100",
            "--max_history_items",
            "6",
        ]
    )
    log = json.loads((output_dir / "validation.json").read_text())
    return log, states, load_file(output_dir / "model.safetensors")


def test_the_saved_model_is_the_best_validation_step(tiny_run, tmp_path, monkeypatch):
    log, states, saved = rigged_run(tiny_run, tmp_path, monkeypatch, [0.1, 0.3, 0.9, 0.2, 0.1, 0.05], patience=0)
    assert [entry["step"] for entry in log["history"]] == [0, 1, 2, 3, 4, 5]
    assert log["best"] == {"step": 2, "metric": "ndcg@10", "ndcg@10": 0.9}
    assert all(torch.equal(saved[name], states[2][name]) for name in saved)
    assert not all(torch.equal(saved[name], states[-1][name]) for name in saved)  # training went on after the peak
    # The window length it was trained on is what the pipeline and evaluation read.
    assert json.loads((tmp_path / "run" / "config.json").read_text())["max_history_items"] == 6


def test_early_stopping_stops_at_its_patience(tiny_run, tmp_path, monkeypatch):
    log, _, _ = rigged_run(tiny_run, tmp_path, monkeypatch, [0.1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1], patience=2)
    assert [entry["step"] for entry in log["history"]] == [0, 1, 2, 3]  # two validations below step 1's, then stop
    assert log["stopped_early"] and log["best"]["step"] == 1


@pytest.fixture
def music_set(tiny_run):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    corpus = load_corpus(tiny_run["corpus"])
    return tokenizer, build_evaluation_set(corpus, "music", tokenizer.domain_items("music"), "test", 0, 5)


def test_every_recommender_leaves_out_the_history_when_asked(tiny_run, music_set):
    tokenizer, data = music_set
    model = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]).eval()
    recommenders = [
        RecBaseRecommender(ItemRanker(model, tokenizer)),
        PopularityRecommender(),
        RandomRecommender(),
        TextSimilarityRecommender(tokenizer, EmbeddingCache(cache_dir=tiny_run["root"] / "embeddings")),
    ]
    for recommender in recommenders:
        kept = recommender.rank(data, 5, exclude_history=True)
        assert all(len(row) == 5 and not set(row) & set(history) for row, history in zip(kept, data.histories)), (
            recommender.name
        )
        evaluate_recommender(recommender, data, ks=(5,), protocols=("full_ranking",), exclude_history=True)
    # Text similarity ranks the last history item first when history items are allowed.
    allowed = recommenders[-1].rank(data, 5, exclude_history=False)
    assert all(row[0] == history[-1] for row, history in zip(allowed, data.histories))


@pytest.mark.parametrize("dense_head", [False, True])
def test_ranking_excludes_the_history_in_both_heads(tokenizer_with_model, dense_head):
    tokenizer, model = tokenizer_with_model(dense_head)
    histories = [["music/1", "music/5", "music/9"], ["music/2"]]
    items = tokenizer.domain_items("music")
    for row, history in zip(ItemRanker(model, tokenizer).rank(histories, items, 6, exclude_history=True), histories):
        keys = [key for key, _ in row]
        assert len(keys) == 6 and len(set(keys)) == 6 and not set(keys) & set(history)


@pytest.fixture
def tokenizer_with_model(tiny_run):
    def build(dense_head: bool) -> tuple[RecBaseTokenizer, RecBaseForCausalLM]:
        tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
        fields = dict(latent_dim=tokenizer.quantizer.config["latent_dim"]) if dense_head else PLAIN_GENERATIVE
        torch.manual_seed(0)
        model = small_model(**fields).eval()
        if dense_head:
            model.model.code_latents.weight.data.copy_(tokenizer.code_latent_table(model.config.vocab_size))
            # both heads score the domain it "trained" on
            model.ranking_policy = RankingPolicy(code_score_weight=1.0, code_score_domains=["music"])
        return tokenizer, model

    return build
