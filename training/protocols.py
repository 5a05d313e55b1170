"""The evaluation protocols, on one domain's leave-one-out users, and their results as Markdown.

Two protocols, always labelled:
- ``full_ranking``: each model returns its top items among *all* items of the target domain; Recall@K and
  NDCG@K of the held-out next item.
- ``candidate_scoring`` (RecBench-MD, the paper's): the true next item plus ``negatives`` items sampled
  uniformly from the domain (fixed seed), each scored; pooled AUC and per-user GAUC.

A recommender is anything with a ``name``, ``rank(data, k, exclude_history)`` and ``score(data)``
(``training.evaluate.RecBaseRecommender``, the baselines of ``training.baselines``, ``training.sasrec``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from datasets import Dataset

from training.ranking_metrics.ranking_metrics import candidate_metrics, ranking_means

# Model names in results (and so in tables, the model card and plots).
RECBASE = "RecBase"
RECBASE_WITH_COUNTS = "RecBase + catalogue counts"
# The model's dense head with nothing learned: the recency-weighted cosine to the history's content vectors, with
# the policy's whitened re-rank of its top items where the policy has one.
RECBASE_PRIOR = "RecBase prior (no training)"
# The prior's plain cosine ranking, without the policy's whitened re-rank of its top items (also training-free).
RECBASE_PLAIN_PRIOR = "RecBase prior, no re-rank (no training)"
TEXT_SIMILARITY = "text similarity (zero-shot)"
POPULARITY = "popularity (in-domain counts)"
RANDOM = "random"
SASREC = "SASRec (trained on the domain alone)"

PROTOCOLS = {
    "full_ranking": "leave-one-out test item ranked among all items of the domain; Recall@K, NDCG@K",
    "candidate_scoring": "test item + sampled negatives scored per user; pooled AUC and per-user GAUC",
}


@dataclass
class EvaluationSet:
    """The users of one domain to evaluate: histories, held-out targets, sampled candidates (target first)."""

    domain: str
    items: list[str]
    histories: list[list[str]]
    targets: list[str]
    candidates: list[list[str]]
    train_histories: list[list[str]]

    def training_counts(self) -> Counter:
        """Interactions per item in the domain's training part (what popularity and catalogue counts use)."""
        return Counter(key for history in self.train_histories for key in history)


def build_evaluation_set(
    corpus: Mapping[str, Dataset],
    domain: str,
    domain_items: list[str],
    split: str = "test",
    max_users: int = 0,
    negatives: int = 20,
    seed: int = 0,
) -> EvaluationSet:
    """The ``split`` users of ``domain`` in a loaded corpus (all, or ``max_users`` sampled with ``seed``), each with
    the held-out target and sampled candidates."""
    splits = {name: corpus[name].filter(lambda d: d == domain, input_columns="domain") for name in ("train", split)}
    if len(splits["train"]) == 0:
        raise ValueError(f"domain {domain!r} has no interactions to evaluate")
    evaluation = splits[split]
    rng = random.Random(seed)
    chosen = (
        sorted(rng.sample(range(len(evaluation)), max_users))
        if 0 < max_users < len(evaluation)
        else range(len(evaluation))
    )
    histories = [evaluation[i]["history"] for i in chosen]
    targets = [evaluation[i]["target"] for i in chosen]
    if negatives >= len(domain_items):
        raise ValueError(f"domain {domain!r} has {len(domain_items)} items, too few for {negatives} negatives")
    item_set, candidates = set(domain_items), []
    for user, (history, target) in enumerate(zip(histories, targets)):
        seen = set(history) | {target}
        if len(domain_items) - len(seen & item_set) < negatives:
            raise ValueError(
                f"domain {domain!r}: evaluation user #{user} has seen all but "
                f"{len(domain_items) - len(seen & item_set)} items, too few for {negatives} negatives"
            )
        pool: list[str] = []
        while len(pool) < negatives:
            item = domain_items[rng.randrange(len(domain_items))]
            if item not in seen and item not in pool:
                pool.append(item)
        candidates.append([target] + pool)
    return EvaluationSet(domain, domain_items, histories, targets, candidates, splits["train"]["items"])


def evaluate_recommender(
    recommender,
    data: EvaluationSet,
    ks: tuple[int, ...] = (5, 10),
    protocols: tuple[str, ...] = tuple(PROTOCOLS),
    exclude_history: bool = True,
) -> dict[str, float]:
    """The ``protocols`` (both by default) for one recommender on one domain's users; with ``exclude_history``
    the full ranking never holds an item of the user's history (the pipeline's default)."""
    metrics: dict[str, float] = {}
    if "full_ranking" in protocols:
        ranked = recommender.rank(data, max(ks), exclude_history)
        if any(len(set(row)) != len(row) or not set(row) <= set(data.items) for row in ranked):
            raise AssertionError(f"{recommender.name} returned duplicate items or items outside {data.domain}")
        if exclude_history and any(set(row) & set(history) for row, history in zip(ranked, data.histories)):
            raise AssertionError(f"{recommender.name} recommended an item of the history with exclude_history")
        metrics.update(ranking_means(ranked, data.targets, ks))
    if "candidate_scoring" in protocols:
        labels = [[1] + [0] * (len(row) - 1) for row in data.candidates]
        metrics.update(candidate_metrics(recommender.score(data), labels))
    return metrics


def results_markdown(results: dict) -> str:
    """One table per protocol: a row per (domain, model)."""
    lines = []
    for protocol, columns in (
        ("full_ranking", ["recall@5", "ndcg@5", "recall@10", "ndcg@10"]),
        ("candidate_scoring", ["auc", "gauc"]),
    ):
        note = ""
        if protocol == "full_ranking" and "exclude_history" in results:
            note = "; history items " + ("excluded" if results["exclude_history"] else "allowed")
        lines += [
            f"\n**{protocol}** ({PROTOCOLS[protocol]}{note})\n",
            "| domain | users | model | " + " | ".join(columns) + " |",
            "|---|---|---|" + "---|" * len(columns),
        ]
        for domain, entry in results["domains"].items():
            for model_name, metrics in entry["models"].items():
                lines.append(
                    f"| {domain} ({entry['role']}) | {entry['users']} | {model_name} | "
                    + " | ".join(f"{metrics[c]:.4f}" for c in columns)
                    + " |"
                )
    return "\n".join(lines)


def all_results_markdown(results: dict) -> str:
    """The pure results, then (when present) the "zero-shot + catalogue counts" ones under their own heading."""
    text = results_markdown(results)
    if "with_catalogue_counts" in results:
        text += (
            "\n\n### Zero-shot + catalogue counts (a separate setting: each zero-shot domain's item counts "
            "from its training part are given to the model, with no training)\n"
            + results_markdown(results["with_catalogue_counts"])
        )
    return text
