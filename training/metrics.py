"""Recommendation metrics as pure functions (hand-checked in tests/test_metrics.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def recall_at_k(ranked: Sequence[str], target: str, k: int) -> float:
    """1 if the single held-out target is among the first k recommendations, else 0."""
    return float(target in ranked[:k])


def ndcg_at_k(ranked: Sequence[str], target: str, k: int) -> float:
    """With one relevant item, NDCG@k = 1 / log2(rank + 2) for its 0-based rank below k, else 0."""
    for rank, item in enumerate(ranked[:k]):
        if item == target:
            return 1.0 / math.log2(rank + 2)
    return 0.0


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties count half)."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    if not positives or not negatives:
        raise ValueError("AUC needs at least one positive and one negative")
    # Rank-sum (Mann-Whitney U) with average ranks for ties: O(n log n).
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    positive_rank_sum = sum(rank for rank, y in zip(ranks, labels) if y)
    n_pos, n_neg = len(positives), len(negatives)
    return (positive_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def gauc(groups: Sequence[tuple[Sequence[float], Sequence[int]]]) -> float:
    """Mean of per-user AUC, weighted by each user's number of scored rows; users with one class are skipped."""
    total, weight = 0.0, 0
    for scores, labels in groups:
        if 0 < sum(labels) < len(labels):
            total += auc(scores, labels) * len(labels)
            weight += len(labels)
    if not weight:
        raise ValueError("GAUC needs at least one user with both positive and negative rows")
    return total / weight
