"""The baselines RecBase is measured against, on the same users in the same run: random; popularity (counts
from the domain's training part, which a zero-shot model never sees); zero-shot text similarity (cosine between
the mean text embedding of the last ``last_items`` history items and each item's).
"""

from __future__ import annotations

import random

import torch

from tokenization_recbase import RecBaseTokenizer
from tokenization_recbase.embedding_cache_recbase import EmbeddingCache
from training.protocols import POPULARITY, RANDOM, TEXT_SIMILARITY, EvaluationSet


class RandomRecommender:
    name = RANDOM

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        rng = random.Random(self.seed)
        return [
            [
                key
                for key in rng.sample(data.items, min(len(data.items), k + len(history)))
                if not (exclude_history and key in history)
            ][:k]
            for history in data.histories
        ]

    def score(self, data: EvaluationSet) -> list[list[float]]:
        rng = random.Random(self.seed)
        return [[rng.random() for _ in row] for row in data.candidates]


class PopularityRecommender:
    name = POPULARITY

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        counts = data.training_counts()
        top = sorted(data.items, key=lambda key: -counts[key])
        return [
            [key for key in top[: k + len(history)] if not (exclude_history and key in history)][:k]
            for history in data.histories
        ]

    def score(self, data: EvaluationSet) -> list[list[float]]:
        counts = data.training_counts()
        return [[float(counts[key]) for key in row] for row in data.candidates]


class TextSimilarityRecommender:
    """Zero-shot: cosine between the mean embedding of the last history items and every item's embedding."""

    name = TEXT_SIMILARITY

    def __init__(self, tokenizer: RecBaseTokenizer, cache: EmbeddingCache, last_items: int = 1) -> None:
        self.tokenizer, self.cache, self.last_items = tokenizer, cache, last_items

    def _embeddings(self, keys: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(
            self.cache.embed([self.tokenizer.item_text(k) for k in keys], progress=False), dim=-1
        )

    def _queries(self, data: EvaluationSet) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """(users, dim) queries, (items, dim) unit item embeddings, and each item key's row."""
        index = {key: i for i, key in enumerate(data.items)}
        items = self._embeddings(data.items)
        queries = torch.stack(
            [items[[index[k] for k in history[-self.last_items :]]].mean(0) for history in data.histories]
        )
        return queries, items, index

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        queries, items, index = self._queries(data)
        scores = queries @ items.T  # (users, items)
        if exclude_history:
            for row, history in enumerate(data.histories):
                scores[row, [index[key] for key in set(history)]] = float("-inf")
        top = scores.topk(k, dim=-1).indices.tolist()
        return [[data.items[i] for i in row] for row in top]

    def score(self, data: EvaluationSet) -> list[list[float]]:
        queries, items, index = self._queries(data)
        return [(items[[index[k] for k in row]] @ query).tolist() for query, row in zip(queries, data.candidates)]
