"""Every ranking policy through the same invariants (the PEFT-tests pattern): real distinct items of the ranked
domain, the history excluded when asked, a batch equal to single calls, a LoRA equal to its merged model, and the
policy surviving save/load with the ranking unchanged."""

import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model

from modeling_recbase import RANKING_CONFIG_NAME, ItemRanker, RankingPolicy, RecBaseConfig, RecBaseForCausalLM
from tests.conftest import TINY_SIZE
from tokenization_recbase import RecBaseTokenizer
from training.arguments import LORA_TARGET_MODULES

GENERATIVE = dict(dense_head=False, content_inputs=False, popularity_buckets=0)
# name -> (RecBaseConfig fields beside TINY_SIZE, the policy)
POLICIES = {
    "dense head alone (the default)": ({}, RankingPolicy()),
    "both heads": ({}, RankingPolicy(code_score_weight=1.0)),
    "both heads, PMI, short shortlist": (
        {},
        RankingPolicy(code_score_weight=0.5, calibrated_code_score=True, shortlist_size=3, num_beams=4),
    ),
    "both heads on music only": ({}, RankingPolicy(code_score_weight=1.0, code_score_domains=["music"])),
    "code head alone (generative model)": (GENERATIVE, RankingPolicy(code_score_weight=1.0, num_beams=8)),
    "dense head, whitened re-rank where the prior alone ranks": (
        {},
        RankingPolicy(residual_domains=["films"], whitened_rerank_top=8),
    ),
}
HISTORIES = [["music/1", "music/5", "music/9"], ["music/2"], ["films/3", "films/7"]]


@pytest.fixture(scope="module")
def tokenizer(tiny_run):
    return RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])


def trained_looking(tokenizer: RecBaseTokenizer, fields: dict, policy: RankingPolicy) -> RecBaseForCausalLM:
    """A model whose zero-initialised parts (dense residual, content projection, popularity bias) are not zero."""
    torch.manual_seed(0)
    config = RecBaseConfig.from_preset("recbase-tiny", **{**TINY_SIZE, **fields})
    model = RecBaseForCausalLM(config).eval()
    with torch.no_grad():
        if config.latent_dim:
            model.model.code_latents.weight.copy_(tokenizer.code_latent_table(config.vocab_size))
        for module in (model.dense_proj, model.model.content_proj, model.popularity_bias):
            if module is not None:
                module.weight.normal_(std=0.1)
    model.ranking_policy = policy
    return model


def ranked(model, tokenizer, histories, exclude_history=True, top_k=5) -> list[list[tuple[str, float]]]:
    domains = [history[-1].split("/")[0] for history in histories]
    return [
        ItemRanker(model, tokenizer).rank([history], tokenizer.domain_items(domain), top_k, exclude_history)[0]
        for history, domain in zip(histories, domains)
    ]


def assert_same_ranking(first, second, atol=1e-4) -> None:
    for row_a, row_b in zip(first, second, strict=True):
        assert [key for key, _ in row_a] == [key for key, _ in row_b]
        torch.testing.assert_close(
            torch.tensor([s for _, s in row_a]), torch.tensor([s for _, s in row_b]), atol=atol, rtol=1e-4
        )


@pytest.mark.parametrize("name", list(POLICIES))
def test_real_distinct_items_of_the_domain_and_the_history_excluded_when_asked(tokenizer, name):
    model = trained_looking(tokenizer, *POLICIES[name])
    for exclude in (True, False):
        for row, history in zip(ranked(model, tokenizer, HISTORIES, exclude), HISTORIES, strict=True):
            keys = [key for key, _ in row]
            domain = history[-1].split("/")[0]
            assert len(keys) == 5 == len(set(keys)) and all(key.startswith(f"{domain}/") for key in keys)
            assert all(key in tokenizer.item_codes for key in keys)
            scores = [score for _, score in row]
            assert scores == sorted(scores, reverse=True)
            if exclude:
                assert not set(keys) & set(history)


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_batch_ranks_as_single_calls(tokenizer, name):
    model = trained_looking(tokenizer, *POLICIES[name])
    music = [history for history in HISTORIES if history[-1].startswith("music/")]
    batch = ItemRanker(model, tokenizer).rank(music, tokenizer.domain_items("music"), 5)
    assert_same_ranking(batch, ranked(model, tokenizer, music))


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_lora_ranks_as_its_merged_model(tokenizer, name):
    model = trained_looking(tokenizer, *POLICIES[name])
    adapted = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=list(LORA_TARGET_MODULES)))
    with torch.no_grad():
        for parameter_name, parameter in adapted.named_parameters():
            if "lora_B" in parameter_name:
                parameter.normal_(std=0.1)  # an adapter that changes something
    through_lora = ranked(adapted.eval(), tokenizer, HISTORIES)
    merged = adapted.merge_and_unload()
    assert merged.ranking_policy == POLICIES[name][1]
    assert_same_ranking(through_lora, ranked(merged, tokenizer, HISTORIES))


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_policy_survives_save_and_load(tokenizer, name, tmp_path):
    model = trained_looking(tokenizer, *POLICIES[name])
    model.save_pretrained(tmp_path)
    assert (tmp_path / RANKING_CONFIG_NAME).is_file()
    reloaded = RecBaseForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.ranking_policy == POLICIES[name][1]
    assert_same_ranking(ranked(reloaded, tokenizer, HISTORIES), ranked(model, tokenizer, HISTORIES), atol=1e-5)


def test_a_folder_without_a_policy_gets_the_one_its_config_implies(tokenizer, tmp_path):
    generative = trained_looking(tokenizer, GENERATIVE, RankingPolicy(code_score_weight=1.0))
    generative.save_pretrained(tmp_path)
    (tmp_path / RANKING_CONFIG_NAME).unlink()
    assert RecBaseForCausalLM.from_pretrained(tmp_path).ranking_policy == RankingPolicy(code_score_weight=1.0)
    # An older release kept the ranking fields in config.json: they are read from there.
    old = RecBaseConfig.from_preset(
        "recbase-tiny", **TINY_SIZE, code_score_weight=0.5, rerank_candidates=7, code_score_domains=["music"]
    )
    assert RankingPolicy.from_model_config(old) == RankingPolicy(
        code_score_weight=0.5, shortlist_size=7, code_score_domains=["music"]
    )


def test_a_policy_file_with_an_unknown_field_is_refused_by_name(tmp_path):
    RankingPolicy().save_pretrained(tmp_path)
    (tmp_path / RANKING_CONFIG_NAME).write_text('{"code_score_weight": 1.0, "beam_width": 3}')
    with pytest.raises(ValueError, match=rf"{RANKING_CONFIG_NAME}: not a RecBase ranking policy"):
        RankingPolicy.from_pretrained(tmp_path, RecBaseConfig())


def test_a_policy_that_ranks_nothing_is_refused(tokenizer):
    generative = trained_looking(tokenizer, GENERATIVE, RankingPolicy(code_score_weight=1.0))
    with pytest.raises(ValueError, match="no dense head"):
        ItemRanker(generative, tokenizer, dataclasses.replace(generative.ranking_policy, code_score_weight=0.0))
    with pytest.raises(ValueError, match="num_beams"):
        RankingPolicy(num_beams=0)


def test_the_default_config_is_the_model_the_main_job_trains():
    from training.arguments import ModelArguments

    config, arguments = RecBaseConfig(), ModelArguments()
    assert (config.dense_head, config.content_inputs, config.popularity_buckets) == (True, True, 10)
    assert (config.codebook_sizes, config.disambiguation_size, config.item_vector_size) == ([256, 256, 256], 32, 384)
    for name in (
        "dense_head",
        "content_inputs",
        "popularity_buckets",
        "dense_temperature",
        "dense_history_items",
        "dense_history_decay",
        "dense_loss_weight",
    ):
        assert getattr(arguments, name) == getattr(config, name), name
    assert RankingPolicy().code_score_weight == 0.0  # the dense head alone ranks the trained model
