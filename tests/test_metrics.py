"""Metrics against values computed by hand."""

import math

import pytest

from training.metrics import auc, gauc, ndcg_at_k, recall_at_k


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
