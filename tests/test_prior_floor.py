"""The training-free prior as a named baseline, and the floor: the residual counts only where validation says so."""

import dataclasses

import torch

from modeling_recbase import ItemRanker, RankingPolicy, RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer
from training.arguments import EvaluationArguments
from training.evaluate import evaluate
from training.pretrain import helped_domains
from training.protocols import RECBASE, RECBASE_PRIOR

HISTORIES = [["music/1", "music/5", "music/9"], ["music/2", "music/6"]]


def trained_looking(tiny_run) -> tuple[RecBaseForCausalLM, RecBaseTokenizer]:
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    model = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]).eval()
    with torch.no_grad():
        model.dense_proj.weight.normal_(std=0.1)
        model.popularity_bias.weight[1:].normal_()
    tokenizer.set_item_counts({key: index for index, key in enumerate(tokenizer.domain_items("music"))})
    return model, tokenizer


def test_the_prior_policy_scores_as_the_model_with_its_residual_at_zero(tiny_run):
    model, tokenizer = trained_looking(tiny_run)
    music = tokenizer.domain_items("music")
    prior = ItemRanker(model, tokenizer, model.ranking_policy.prior_only())
    zeroed = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]).eval()
    with torch.no_grad():
        zeroed.dense_proj.weight.zero_()
    untrained = ItemRanker(zeroed, tokenizer)  # nothing learned, and its popularity bias is zero
    assert prior.rank(HISTORIES, music, 5) == untrained.rank(HISTORIES, music, 5)
    candidates = [music[:7], music[7:14]]
    torch.testing.assert_close(
        torch.tensor(prior.score(HISTORIES, candidates)), torch.tensor(untrained.score(HISTORIES, candidates))
    )
    # ... and the trained model's own ranking differs from it, so the equality above is not vacuous.
    assert ItemRanker(model, tokenizer).score(HISTORIES, candidates) != prior.score(HISTORIES, candidates)


def test_a_domain_outside_the_residual_domains_is_ranked_by_the_prior(tiny_run):
    model, tokenizer = trained_looking(tiny_run)
    music = tokenizer.domain_items("music")
    gated = dataclasses.replace(model.ranking_policy, residual_domains=["films"])
    zeroed = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.dense_proj.weight.zero_()
    torch.testing.assert_close(
        torch.tensor(ItemRanker(model, tokenizer, gated).score(HISTORIES, [music[:7]] * 2)),
        torch.tensor(ItemRanker(zeroed, tokenizer).score(HISTORIES, [music[:7]] * 2)),
    )
    # In a domain of residual_domains the residual counts, in ranking as in scoring.
    everywhere = dataclasses.replace(gated, residual_domains=["music"])
    assert ItemRanker(model, tokenizer, everywhere).rank(HISTORIES, music, 5) == ItemRanker(model, tokenizer).rank(
        HISTORIES, music, 5
    )


def test_the_residual_stays_only_where_validation_rose_above_the_start():
    history = [
        {"step": 0, "ndcg@10": 0.2, "ndcg@10_a": 0.10, "ndcg@10_b": 0.30, "ndcg@10_c": 0.20},
        {"step": 500, "ndcg@10": 0.3, "ndcg@10_a": 0.20, "ndcg@10_b": 0.25, "ndcg@10_c": 0.20},
    ]
    # a rose, b fell, c stayed level (not kept), d was never validated (kept: no evidence against it).
    assert helped_domains(history, 500, "ndcg@10", ["a", "b", "c", "d"]) == ["a", "d"]
    assert helped_domains(history, 0, "ndcg@10", ["a", "b"]) == []  # the start kept: nothing learned counts
    assert helped_domains(history[1:], 500, "ndcg@10", ["a", "b"]) == ["a", "b"]  # no step 0 (a resumed run)


def test_evaluation_reports_the_prior_beside_the_model(tiny_run, tmp_path):
    results = evaluate(
        EvaluationArguments(
            checkpoint=str(tiny_run["checkpoint"]),
            corpus_dir=str(tiny_run["corpus"]),
            domains=["films"],
            zero_shot=["films"],
            negatives=5,
            cache_dir=str(tiny_run["root"] / "embeddings"),
        )
    )
    models = results["domains"]["films"]["models"]
    assert {RECBASE, RECBASE_PRIOR} <= set(models)
    # The tiny checkpoint is untrained: its residual is zero, so the model is its prior.
    assert models[RECBASE] == models[RECBASE_PRIOR]
    assert results["ranking_policy"] == dataclasses.asdict(RankingPolicy())


def test_adapting_a_model_keeps_its_floor_and_can_start_at_the_prior(tiny_run, tmp_path):
    """A fine-tuned model adds the new domain to the base's residual domains (the base's floor stays), and
    ``reset_dense_residual`` starts it exactly at the prior."""
    from training.arguments import DataArguments, ModelArguments
    from training.checkpoint import write_hub_folder
    from training.pretrain import build_model

    model, tokenizer = trained_looking(tiny_run)
    model.ranking_policy = RankingPolicy(residual_domains=["music"], code_score_domains=["music"])
    write_hub_folder(model, tokenizer, tmp_path / "base")
    data = DataArguments(corpus_dir=str(tiny_run["corpus"]), domains=["films"], tokenizer_dir=str(tmp_path / "base"))
    kept = build_model(data, ModelArguments(init_from=str(tmp_path / "base")), tokenizer)
    assert kept.ranking_policy.residual_domains == ["films", "music"] and kept.dense_proj.weight.abs().sum() > 0
    reset = build_model(data, ModelArguments(init_from=str(tmp_path / "base"), reset_dense_residual=True), tokenizer)
    films = tokenizer.domain_items("films")
    histories = [["films/1", "films/5"]]
    prior = ItemRanker(model, tokenizer, model.ranking_policy.prior_only()).rank(histories, films, 5)
    assert ItemRanker(reset.eval(), tokenizer, reset.ranking_policy.prior_only()).rank(histories, films, 5) == prior
    assert (
        ItemRanker(reset, tokenizer, dataclasses.replace(reset.ranking_policy, popularity_bias=False)).rank(
            histories, films, 5
        )
        == prior
    )
