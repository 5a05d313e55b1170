"""Catalogue counts with a weight chosen on the domain's own log: the score it gives, and the leave-last-out fit."""

import dataclasses
import json
import math

import pytest
import torch

from modeling_recbase import ItemRanker, RankingPolicy, RecBaseForCausalLM
from modeling_recbase.ranking_recbase import one_standard_error_choice
from tests.test_prior_floor import trained_looking  # the residual and the popularity bias as if trained
from training import index_items

# music's log: each user's interactions in order (the synthetic corpus's music items are music/0 .. music/23).
LOG = [["music/1", "music/5", "music/9"], ["music/2", "music/6", "music/5"], ["music/3", "music/5"], ["music/7"]]


def test_a_count_weight_adds_weight_times_log_count_in_place_of_the_learned_bias(tiny_run):
    model, tokenizer = trained_looking(tiny_run)
    music, histories = tokenizer.domain_items("music"), [LOG[0][:2], LOG[1][:2]]
    without_counts = ItemRanker(model, tokenizer, dataclasses.replace(model.ranking_policy, popularity_bias=False))
    weighted = ItemRanker(model, tokenizer, dataclasses.replace(model.ranking_policy, count_weights={"music": 2.0}))
    log_counts = torch.arange(len(music), dtype=torch.float).log1p()  # trained_looking's counts
    torch.testing.assert_close(
        weighted.dense_scores(histories, music), without_counts.dense_scores(histories, music) + 2.0 * log_counts
    )
    candidates = [music[:7], music[7:14]]
    torch.testing.assert_close(
        torch.tensor(weighted.score(histories, candidates)),
        torch.tensor(without_counts.score(histories, candidates))
        + 2.0 * torch.stack([log_counts[:7], log_counts[7:14]]),
    )
    # The learned bias is what a domain without a count weight gets, so the comparison above is not vacuous.
    assert ItemRanker(model, tokenizer).score(histories, candidates) != without_counts.score(histories, candidates)
    # No catalogue counts at all: the weight has nothing to add.
    ignored = dataclasses.replace(weighted.policy, popularity_bias=False)
    assert ItemRanker(model, tokenizer, ignored).rank(histories, music, 5) == without_counts.rank(histories, music, 5)


def leave_last_out_by_hand(model, tokenizer, log: list[list[str]], weight: float) -> list[float]:
    """Each user's NDCG@10 of their last item ranked by the public API, the counts set to the log's less every
    user's last item (as the counts at test time hold no test item)."""
    music = tokenizer.domain_items("music")
    tokenizer.set_item_counts({key: sum(other[:-1].count(key) for other in log) for key in music})
    ndcg = []
    for sequence in (sequence for sequence in log if len(sequence) >= 2):
        policy = dataclasses.replace(model.ranking_policy, count_weights={"music": weight})
        ranked = [key for key, _ in ItemRanker(model, tokenizer, policy).rank([sequence[:-1]], music, 10)[0]]
        ndcg.append(1 / math.log2(ranked.index(sequence[-1]) + 2) if sequence[-1] in ranked else 0.0)
    return ndcg


def test_the_fitted_weight_follows_the_one_standard_error_rule_on_the_leave_last_out_ndcg_computed_by_hand(tiny_run):
    model, tokenizer = trained_looking(tiny_run)
    ranker = ItemRanker(model, tokenizer)
    weights = (0.0, 1.0, 8.0)
    ndcg = ranker.fit_count_weight(LOG, weights=weights)
    assert tokenizer.catalogue_counts(["music/5", "music/9", "music/0"]).tolist() == [3, 1, 0]  # the log's counts
    by_hand = torch.tensor([leave_last_out_by_hand(model, tokenizer, LOG, weight) for weight in weights])
    for weight, users in zip(weights, by_hand):
        assert ndcg[weight] == pytest.approx(users.mean().item(), abs=1e-6)
    assert ranker.policy.count_weights == {"music": one_standard_error_choice(weights, by_hand)}
    assert model.ranking_policy.count_weights == {}  # the model's own policy is left as it was
    # With music/5 the last item of most users, counts win over the untrained-looking dense score.
    assert ndcg[8.0] > ndcg[0.0]


@pytest.mark.parametrize(
    ("gains", "chosen"),
    [
        # Weight 1 is better for every user: a clear win moves the weight.
        ([[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.5], [0.0, 0.1, 0.2, 0.3]], 1.0),
        # Weight 1 wins on average but helps some users and hurts others: within one standard error of it, the
        # smallest weight stays.
        ([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0]], 0.0),
        # Every weight alike: the smallest.
        ([[0.3, 0.3], [0.3, 0.3], [0.3, 0.3]], 0.0),
        # One user: no spread to judge by, so the best mean wins.
        ([[0.0], [0.0], [1.0]], 8.0),
    ],
)
def test_the_one_standard_error_rule_keeps_the_smallest_weight_the_users_cannot_tell_from_the_best(gains, chosen):
    assert one_standard_error_choice((0.0, 1.0, 8.0), torch.tensor(gains)) == chosen
    # The order the weights are listed in does not matter.
    assert one_standard_error_choice((8.0, 1.0, 0.0), torch.tensor(gains).flip(0)) == chosen


def test_a_log_that_cannot_be_fitted_is_refused_with_its_reason(tiny_run):
    model, tokenizer = trained_looking(tiny_run)
    ranker = ItemRanker(model, tokenizer)
    with pytest.raises(ValueError, match="one domain"):
        ranker.fit_count_weight([["music/1", "films/2"]])
    with pytest.raises(ValueError, match="'music/99' of the log is not indexed"):
        ranker.fit_count_weight([["music/1", "music/99"]])
    with pytest.raises(ValueError, match="no user with two interactions"):
        ranker.fit_count_weight([["music/1"], ["music/2"]])
    with pytest.raises(ValueError, match="count weights must be >= 0"):
        RankingPolicy(count_weights={"music": -1.0})


def test_index_items_with_catalogue_counts_saves_the_fitted_weight(tiny_run, tmp_path):
    folder = index_items.main(
        [
            "--checkpoint",
            str(tiny_run["checkpoint"]),
            "--corpus_dir",
            str(tiny_run["corpus"]),
            "--domains",
            "music",
            "--catalogue_counts",
            "True",
            "--output_dir",
            str(tmp_path / "indexed"),
            "--cache_dir",
            str(tiny_run["root"] / "embeddings"),
        ]
    )
    saved = json.loads((folder / "ranking_config.json").read_text(encoding="utf-8"))
    assert set(saved["count_weights"]) == {"music"}
    assert RecBaseForCausalLM.from_pretrained(folder).ranking_policy.count_weights == saved["count_weights"]
