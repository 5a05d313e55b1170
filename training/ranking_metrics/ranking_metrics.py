"""Ranking metrics of next-item recommendation, as an ``evaluate`` metric and as the pure functions behind it.

Two configurations, one per protocol of a recommender's evaluation:

- ``"full_ranking"`` (default): ``predictions`` are each user's ranked item keys, ``references`` the held-out next
  item; Recall@K and NDCG@K for each ``k`` of ``ks`` (default 5 and 10), averaged over users.
- ``"candidate_scoring"``: ``predictions`` are each user's candidate scores, ``references`` their 0/1 labels; pooled
  AUC over every (user, candidate) row and GAUC, the mean of per-user AUC weighted by rows.

    import evaluate
    ranking = evaluate.load("training/ranking_metrics")                          # a local folder: works offline
    ranking.compute(predictions=[["a", "b"], ["c", "a"]], references=["b", "a"], ks=[1])
    scoring = evaluate.load("training/ranking_metrics", "candidate_scoring")
    scoring.compute(predictions=[[0.9, 0.1], [0.2, 0.3]], references=[[1, 0], [1, 0]])

The folder is self-contained (it imports only ``evaluate``, ``datasets`` and the standard library), so it can be
published as a Hub metric for any recommender. RecBase's evaluation (``training.protocols``) calls the same
functions, ``ranking_means`` and ``candidate_metrics``, directly; the values are hand-checked in
``tests/test_metrics.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets
import evaluate

FULL_RANKING, CANDIDATE_SCORING = "full_ranking", "candidate_scoring"


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


def ranking_means(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """Recall@k and NDCG@k for each k, averaged over users."""
    if not ranked or len(ranked) != len(targets):
        raise ValueError(f"need one ranking per target, got {len(ranked)} rankings and {len(targets)} targets")
    metrics = {}
    for k in ks:
        metrics[f"recall@{k}"] = sum(recall_at_k(r, t, k) for r, t in zip(ranked, targets)) / len(ranked)
        metrics[f"ndcg@{k}"] = sum(ndcg_at_k(r, t, k) for r, t in zip(ranked, targets)) / len(ranked)
    return metrics


def candidate_metrics(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[int]]) -> dict[str, float]:
    """Pooled AUC over every (user, candidate) row, and per-user GAUC."""
    return {
        "auc": auc([s for row in scores for s in row], [y for row in labels for y in row]),
        "gauc": gauc(list(zip(scores, labels))),
    }


class RankingMetrics(evaluate.Metric):
    """Recall@K / NDCG@K of full rankings, or AUC / GAUC of scored candidates (``config_name``)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == CANDIDATE_SCORING:
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            )
        elif self.config_name in (FULL_RANKING, "default"):
            features = datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            )
        else:
            raise ValueError(f"unknown configuration {self.config_name!r}: {FULL_RANKING!r} or {CANDIDATE_SCORING!r}")
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            features=features,
            inputs_description="predictions: per user, ranked item keys (full_ranking) or candidate scores "
            "(candidate_scoring); references: the held-out item key, or the candidates' 0/1 labels.",
        )

    def _compute(self, predictions, references, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
        if self.config_name == CANDIDATE_SCORING:
            return candidate_metrics(predictions, references)
        return ranking_means(predictions, references, ks)
