"""Metrics against values computed by hand, their invariants, and the same values through ``evaluate.load`` of the
metric folder (offline)."""

import math
import random

import evaluate
import pytest

from tests.conftest import REPO_ROOT
from training.ranking_metrics.ranking_metrics import auc, gauc, ndcg_at_k, recall_at_k

METRIC_FOLDER = str(REPO_ROOT / "training" / "ranking_metrics")


@pytest.mark.parametrize(
    "ranked, target, k, recall, ndcg",
    [
        (["a", "b", "c"], "a", 1, 1.0, 1.0),
        (["a", "b", "c"], "b", 5, 1.0, 1 / math.log2(3)),  # rank 1 -> 1/log2(3) = 0.6309
        (["a", "b", "c"], "c", 2, 0.0, 0.0),
        (["a", "b", "c", "d", "e"], "e", 5, 1.0, 1 / math.log2(6)),
        ([], "a", 10, 0.0, 0.0),
    ],
)
def test_recall_and_ndcg(ranked, target, k, recall, ndcg):
    assert recall_at_k(ranked, target, k) == recall
    assert ndcg_at_k(ranked, target, k) == pytest.approx(ndcg)


def test_auc_by_hand():
    # Positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4.
    assert auc([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == 0.75
    assert auc([1.0, 1.0], [1, 0]) == 0.5  # a tie counts half
    assert auc([0.2, 0.3, 0.3, 0.1], [0, 1, 0, 0]) == pytest.approx((1 + 0.5 + 1) / 3)


def test_gauc_weights_users_by_rows_and_skips_one_class_users():
    users = [([0.9, 0.1, 0.2], [1, 0, 0]), ([0.1, 0.5], [1, 0]), ([0.3, 0.4], [0, 0])]
    assert gauc(users) == pytest.approx((1.0 * 3 + 0.0 * 2) / 5)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="positive and one negative"):
        auc([0.1, 0.2], [0, 0])


@pytest.mark.parametrize("k", [1, 5, 10])
def test_a_perfect_ranking_scores_one_everywhere(k):
    ranked = [f"item{i}" for i in range(10)]
    assert recall_at_k(ranked, "item0", k) == ndcg_at_k(ranked, "item0", k) == 1.0
    scores = [1.0] + [0.5] * 9
    assert auc(scores, [1] + [0] * 9) == 1.0 and gauc([(scores, [1] + [0] * 9)] * 3) == 1.0


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([0.1, 0.9, 0.8], [1, 0, 0], 0.0),  # reversed: every negative above the positive
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),  # all tied
        ([0.3, 0.2, 0.1], [1, 1, 0], 1.0),
    ],
)
def test_auc_of_reversed_tied_and_perfect_scores(scores, labels, expected):
    assert auc(scores, labels) == expected


def test_random_scores_give_an_auc_near_one_half():
    rng = random.Random(0)
    labels = [1] * 2000 + [0] * 8000
    # n_pos * n_neg = 16e6 pairs: the standard error of AUC under the null is about 0.007, so 0.03 is > 4 sigma.
    assert abs(auc([rng.random() for _ in labels], labels) - 0.5) < 0.03


def test_the_evaluate_metric_loads_offline_and_gives_the_hand_checked_values(monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    ranking = evaluate.load(METRIC_FOLDER)
    ranked = [["a", "b", "c"], ["a", "b", "c", "d", "e"], ["a"]]
    assert ranking.compute(predictions=ranked, references=["b", "e", "z"], ks=[2, 5]) == pytest.approx(
        {
            "recall@2": 1 / 3,
            "ndcg@2": (1 / math.log2(3)) / 3,
            "recall@5": 2 / 3,
            "ndcg@5": (1 / math.log2(3) + 1 / math.log2(6)) / 3,
        }
    )
    scoring = evaluate.load(METRIC_FOLDER, "candidate_scoring")
    users = [([0.9, 0.1, 0.2], [1, 0, 0]), ([0.1, 0.5], [1, 0]), ([0.3, 0.4], [0, 0])]
    result = scoring.compute(predictions=[s for s, _ in users], references=[y for _, y in users])
    assert result["gauc"] == pytest.approx((1.0 * 3 + 0.0 * 2) / 5)
    assert result["auc"] == auc([s for row, _ in users for s in row], [y for _, row in users for y in row])
