"""The ranking policy's whitened re-rank: where the prior alone ranks a domain, its top items are put in the order of
the prior on whitened axes. It equals its formula computed by hand, is the ranking the screen measured, scores
candidates as it ranks the catalogue, and is off wherever something learned or counted scores the domain."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from benchmarks.frame_invariant_screen import DomainTable, TopReranked, whitened_prior
from modeling_recbase import ItemRanker, RankingPolicy, RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer

HISTORIES = [["music/0", "music/4", "music/8"], ["music/1", "music/5"], ["music/2"], ["music/9", "music/13"]]
TOP = 8
RERANKED = RankingPolicy(residual_domains=[], whitened_rerank_top=TOP)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_run) -> tuple[RecBaseForCausalLM, RecBaseTokenizer]:
    """The tiny checkpoint with a residual that is not zero (so ranking by the prior alone is not vacuous)."""
    model = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"]).eval()
    with torch.no_grad():
        model.dense_proj.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(0))
    return model, RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])


def ranked_keys(ranker: ItemRanker, items: list[str]) -> list[list[str]]:
    return [[key for key, _ in row] for row in ranker.rank(HISTORIES, items, len(items), exclude_history=False)]


def test_the_top_is_in_the_whitened_priors_order_computed_by_hand(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    music = tokenizer.domain_items("music")
    unit, position = tokenizer.unit_item_vectors(music), {key: i for i, key in enumerate(music)}
    decay = model.config.dense_history_decay
    queries = torch.stack(
        [sum(decay**k * unit[position[key]] for k, key in enumerate(reversed(history))) for history in HISTORIES]
    )
    variances = tokenizer.item_vectors(music).var(0)
    scales = variances.clamp(min=variances.max() * 1e-6) ** -0.25  # power 0.5
    whitened = F.normalize(unit * scales, dim=-1)
    expected = []
    for query in queries:
        prior = unit @ query
        top = prior.topk(TOP).indices.tolist()
        by_whitened = (whitened - whitened.mean(0)) @ F.normalize(query * scales, dim=0)
        rest = [i for i in prior.argsort(descending=True).tolist() if i not in top]
        expected.append([music[i] for i in sorted(top, key=lambda i: -by_whitened[i])] + [music[i] for i in rest])
    assert ranked_keys(ItemRanker(model, tokenizer, RERANKED), music) == expected
    # ... which is not the prior's own order, so the equality is not vacuous.
    assert expected != ranked_keys(ItemRanker(model, tokenizer, RankingPolicy(residual_domains=[])), music)


def test_power_zero_or_top_zero_ranks_as_the_plain_prior(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    music = tokenizer.domain_items("music")
    plain = ranked_keys(ItemRanker(model, tokenizer, RankingPolicy(residual_domains=[])), music)
    for change in ({"whitening_power": 0.0}, {"whitened_rerank_top": 0}):
        policy = dataclasses.replace(RERANKED, **change)
        assert ranked_keys(ItemRanker(model, tokenizer, policy), music) == plain


def test_the_shipped_rerank_scores_as_the_screen_measured_it(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    table = DomainTable(tokenizer, "music")
    head = TopReranked(whitened_prior(table, 0.5), table, top=TOP)
    screen = head.scores(table.history_vectors(HISTORIES), table.unit, head.centre(table))  # (users, 24)
    shipped = torch.tensor(ItemRanker(model, tokenizer, RERANKED).score(HISTORIES, [table.keys] * len(HISTORIES)))
    inside = screen > TopReranked.OFFSET / 2
    assert (inside.sum(-1) == TOP).all()
    offset = 4.0 / model.config.dense_temperature
    torch.testing.assert_close(shipped[~inside], screen[~inside], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shipped[inside] - offset, screen[inside] - TopReranked.OFFSET, atol=2e-3, rtol=1e-4)


def test_candidates_score_as_their_place_in_the_reranked_catalogue(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    music = tokenizer.domain_items("music")
    ranker = ItemRanker(model, tokenizer, RERANKED)
    catalogue = torch.tensor(ranker.score(HISTORIES, [music] * len(HISTORIES)))  # (users, 24)
    order = [[music[i] for i in row] for row in catalogue.argsort(dim=-1, descending=True).tolist()]
    assert order == ranked_keys(ranker, music)
    # A user's candidates are judged against the whole catalogue's top, whichever few are scored.
    picked = torch.randperm(len(music), generator=torch.Generator().manual_seed(1))[:7]
    candidates = [[music[i] for i in picked.tolist()]] * len(HISTORIES)
    torch.testing.assert_close(
        torch.tensor(ranker.score(HISTORIES, candidates)), catalogue[:, picked], atol=1e-4, rtol=1e-5
    )


@pytest.mark.parametrize(
    "change, reranks",
    [
        ({}, True),
        ({"whitened_rerank_top": 0}, False),
        ({"residual_domains": None}, False),  # the residual counts everywhere
        ({"residual_domains": ["music"]}, False),
        ({"residual_domains": ["films"]}, True),
        ({"code_score_weight": 1.0}, False),  # the code head scores every domain
        ({"code_score_weight": 1.0, "code_score_domains": ["films"]}, True),
        ({"count_weights": {"music": 1.0}}, False),  # catalogue counts score it
        ({"count_weights": {"music": 0.0}}, True),  # a count weight fit to 0: the prior alone ranks
        ({"count_weights": {"music": 1.0}, "popularity_bias": False}, True),
    ],
)
def test_only_a_domain_that_the_prior_alone_ranks_is_reranked(change, reranks):
    assert dataclasses.replace(RERANKED, **change).reranks("music") is reranks


def test_prior_only_keeps_the_rerank_and_a_bad_field_is_refused():
    policy = RankingPolicy(whitened_rerank_top=100, code_score_weight=1.0)
    assert not policy.reranks("music") and policy.prior_only().reranks("music")
    for bad in ({"whitened_rerank_top": -1}, {"whitening_power": -0.5}):
        with pytest.raises(ValueError, match="whitened_rerank_top >= 0 and whitening_power >= 0"):
            RankingPolicy(**bad)
