"""Evaluate a saved RecBase checkpoint and baselines on the leave-one-out test users of any domain.

Two protocols, always labelled:
- ``full_ranking``: each model returns its top items among *all* items of the target domain (RecBase by
  beam search constrained to that domain's item IDs); Recall@K and NDCG@K of the held-out next item.
- ``candidate_scoring`` (RecBench-MD, the paper's): the true next item plus ``--negatives`` items sampled
  uniformly from the domain (fixed seed), each scored (RecBase: log-likelihood of the item's code tokens
  given the history); pooled AUC and per-user GAUC.

Baselines, on the same users in the same run: random; popularity (counts from the domain's training part,
which a zero-shot model never sees); zero-shot text similarity (cosine between the mean text embedding of
the last ``--text_similarity_items`` history items and each item).

    python -m training.evaluate --checkpoint outputs/recbase-tiny --corpus_dir outputs/recbase-tiny-work/corpus \
        --domains amazon14_beauty amazon18_office ml-100k
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_recbase import RecBaseForCausalLM
from modeling_recbase.pipeline_recbase import rank_items, score_candidates
from tokenization_recbase import RecBaseTokenizer, check_model_config
from training.corpus import leave_one_out, load_corpus, to_sequences
from training.embedding import DEFAULT_CACHE_DIR, EmbeddingCache
from training.atomic import write_json_atomically, write_text_atomically
from training.metrics import auc, gauc, ndcg_at_k, recall_at_k

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
    interactions, domain: str, domain_items: list[str], split: str = "test", max_users: int = 0,
    negatives: int = 20, seed: int = 0,
) -> EvaluationSet:
    """Leave-one-out rows of ``domain`` (all users, or ``max_users`` sampled with ``seed``) with candidates."""
    rows = interactions.filter(lambda d: d == domain, input_columns="domain")
    if len(rows) == 0:
        raise ValueError(f"domain {domain!r} has no interactions to evaluate")
    splits = leave_one_out(to_sequences(rows))
    evaluation = splits[split]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(evaluation)), max_users)) if 0 < max_users < len(evaluation) else range(len(evaluation))
    histories = [evaluation[i]["history"] for i in chosen]
    targets = [evaluation[i]["target"] for i in chosen]
    if negatives >= len(domain_items):
        raise ValueError(f"domain {domain!r} has {len(domain_items)} items, too few for {negatives} negatives")
    item_set, candidates = set(domain_items), []
    for user, (history, target) in enumerate(zip(histories, targets)):
        seen = set(history) | {target}
        if len(domain_items) - len(seen & item_set) < negatives:
            raise ValueError(f"domain {domain!r}: evaluation user #{user} has seen all but "
                             f"{len(domain_items) - len(seen & item_set)} items, too few for {negatives} negatives")
        pool: list[str] = []
        while len(pool) < negatives:
            item = domain_items[rng.randrange(len(domain_items))]
            if item not in seen and item not in pool:
                pool.append(item)
        candidates.append([target] + pool)
    return EvaluationSet(domain, domain_items, histories, targets, candidates, splits["train"]["items"])


class RecBaseRecommender:
    """RecBase as a recommender: constrained beam search for ranking, code log-likelihood for scoring."""

    def __init__(self, model: RecBaseForCausalLM, tokenizer: RecBaseTokenizer, max_history_items: int | None = None,
                 num_beams: int = 20, batch_size: int = 16, name: str = "RecBase") -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.max_length = 1 + (max_history_items or model.config.max_history_items) * tokenizer.tokens_per_item
        self.num_beams, self.batch_size = num_beams, batch_size

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        ranked = []
        for start in tqdm(range(0, len(data.histories), self.batch_size), desc=f"{data.domain} beam search", leave=False):
            batch = data.histories[start : start + self.batch_size]
            rows = rank_items(self.model, self.tokenizer, batch, data.items, max(self.num_beams, k), self.max_length,
                              exclude_history)
            ranked += [[key for key, _ in row[:k]] for row in rows]
        return ranked

    def score(self, data: EvaluationSet) -> list[list[float]]:
        """Sum of log-probabilities of each candidate's code tokens after the history: (users, candidates)."""
        scores = []
        for start in tqdm(range(0, len(data.histories), self.batch_size), desc=f"{data.domain} scoring", leave=False):
            scores += score_candidates(self.model, self.tokenizer, data.histories[start : start + self.batch_size],
                                       data.candidates[start : start + self.batch_size], self.max_length)
        return scores


class RandomRecommender:
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        rng = random.Random(self.seed)
        return [[key for key in rng.sample(data.items, min(len(data.items), k + len(history)))
                 if not (exclude_history and key in history)][:k] for history in data.histories]

    def score(self, data: EvaluationSet) -> list[list[float]]:
        rng = random.Random(self.seed)
        return [[rng.random() for _ in row] for row in data.candidates]


class PopularityRecommender:
    name = "popularity (in-domain counts)"

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        counts = data.training_counts()
        top = sorted(data.items, key=lambda key: -counts[key])
        return [[key for key in top[: k + len(history)] if not (exclude_history and key in history)][:k]
                for history in data.histories]

    def score(self, data: EvaluationSet) -> list[list[float]]:
        counts = data.training_counts()
        return [[float(counts[key]) for key in row] for row in data.candidates]


class TextSimilarityRecommender:
    """Zero-shot: cosine between the mean embedding of the last history items and every item's embedding."""

    name = "text similarity (zero-shot)"

    def __init__(self, tokenizer: RecBaseTokenizer, cache: EmbeddingCache, last_items: int = 1) -> None:
        self.tokenizer, self.cache, self.last_items = tokenizer, cache, last_items

    def _embeddings(self, keys: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(self.cache.embed([self.tokenizer.item_text(k) for k in keys], progress=False), dim=-1)

    def _queries(self, data: EvaluationSet) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """(users, dim) queries, (items, dim) unit item embeddings, and each item key's row."""
        index = {key: i for i, key in enumerate(data.items)}
        items = self._embeddings(data.items)
        queries = torch.stack([items[[index[k] for k in history[-self.last_items:]]].mean(0) for history in data.histories])
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


def evaluate_recommender(recommender, data: EvaluationSet, ks: tuple[int, ...] = (5, 10),
                         protocols: tuple[str, ...] = tuple(PROTOCOLS), exclude_history: bool = True) -> dict[str, float]:
    """The ``protocols`` (both by default) for one recommender on one domain's users; with ``exclude_history``
    the full ranking never holds an item of the user's history (the pipeline's default)."""
    metrics: dict[str, float] = {}
    if "full_ranking" in protocols:
        ranked = recommender.rank(data, max(ks), exclude_history)
        if any(len(set(row)) != len(row) or not set(row) <= set(data.items) for row in ranked):
            raise AssertionError(f"{recommender.name} returned duplicate items or items outside {data.domain}")
        if exclude_history and any(set(row) & set(history) for row, history in zip(ranked, data.histories)):
            raise AssertionError(f"{recommender.name} recommended an item of the history with exclude_history")
        for k in ks:
            metrics[f"recall@{k}"] = sum(recall_at_k(r, t, k) for r, t in zip(ranked, data.targets)) / len(ranked)
            metrics[f"ndcg@{k}"] = sum(ndcg_at_k(r, t, k) for r, t in zip(ranked, data.targets)) / len(ranked)
    if "candidate_scoring" in protocols:
        scores = recommender.score(data)
        labels = [[1] + [0] * (len(row) - 1) for row in data.candidates]
        metrics["auc"] = auc([s for row in scores for s in row], [y for row in labels for y in row])
        metrics["gauc"] = gauc(list(zip(scores, labels)))
    return metrics


def load_checkpoint(checkpoint: str | Path) -> tuple[RecBaseForCausalLM, RecBaseTokenizer]:
    """Model and tokenizer from one saved folder (a full model, or a LoRA adapter on its base model), checked
    to share one vocabulary."""
    checkpoint = Path(checkpoint)
    is_adapter = (checkpoint / "adapter_config.json").is_file()
    for name in ("adapter_config.json" if is_adapter else "config.json", "tokenizer_config.json"):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"{checkpoint / name} is missing: not a RecBase checkpoint folder")
    loader = AutoPeftModelForCausalLM if is_adapter else AutoModelForCausalLM
    model = loader.from_pretrained(checkpoint, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    check_model_config(tokenizer, model.config, str(checkpoint))
    return model, tokenizer


def results_markdown(results: dict) -> str:
    """One table per protocol: a row per (domain, model)."""
    lines = []
    for protocol, columns in (("full_ranking", ["recall@5", "ndcg@5", "recall@10", "ndcg@10"]),
                              ("candidate_scoring", ["auc", "gauc"])):
        note = ""
        if protocol == "full_ranking" and "exclude_history" in results:
            note = "; history items " + ("excluded" if results["exclude_history"] else "allowed")
        lines += [f"\n**{protocol}** ({PROTOCOLS[protocol]}{note})\n", "| domain | users | model | " + " | ".join(columns) + " |",
                  "|---|---|---|" + "---|" * len(columns)]
        for domain, entry in results["domains"].items():
            for model_name, metrics in entry["models"].items():
                lines.append(f"| {domain} ({entry['role']}) | {entry['users']} | {model_name} | "
                             + " | ".join(f"{metrics[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def all_results_markdown(results: dict) -> str:
    """The pure results, then (when present) the "zero-shot + catalogue counts" ones under their own heading."""
    text = results_markdown(results)
    if "with_catalogue_counts" in results:
        text += ("\n\n### Zero-shot + catalogue counts (a separate setting: each zero-shot domain's item counts "
                 "from its training part are given to the model, with no training)\n" + results_markdown(results["with_catalogue_counts"]))
    return text


def evaluate(
    checkpoint: str | Path, corpus_dir: str | Path, domains: list[str], zero_shot_domains: list[str] = (),
    split: str = "test", max_users: int = 0, negatives: int = 20, num_beams: int = 20, batch_size: int = 16,
    max_history_items: int | None = None, text_similarity_items: int = 1, cache_dir: str | Path = DEFAULT_CACHE_DIR,
    seed: int = 0, model_name: str = "RecBase", baselines: bool = True, catalogue_counts: bool = False,
    score_overrides: dict | None = None, exclude_history: bool = True,
) -> dict:
    """Evaluate the checkpoint (named ``model_name`` in the results) and, with ``baselines``, the baselines on
    ``domains``; returns the results dict.

    ``catalogue_counts``: the model is given each evaluated domain's item counts from that domain's training
    part (what popularity counts), the "zero-shot + catalogue counts" setting. ``score_overrides``: model config
    fields that only change scoring (``code_score_weight``, ``calibrated_code_score``, ``popularity_buckets`` 0 to
    leave out the popularity bias) set for this run.
    ``exclude_history``: full rankings (of every model) leave out the items of the user's history."""
    model, tokenizer = load_checkpoint(checkpoint)
    model.config.update(score_overrides or {})
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    interactions = load_corpus(corpus_dir)["interactions"]
    recommenders = [RecBaseRecommender(model, tokenizer, max_history_items, num_beams, batch_size, model_name)]
    if baselines:
        recommenders += [
            TextSimilarityRecommender(tokenizer, EmbeddingCache(tokenizer.text_encoder, cache_dir), text_similarity_items),
            PopularityRecommender(), RandomRecommender(seed),
        ]
    results = {"protocols": PROTOCOLS, "split": split, "negatives": negatives, "num_beams": num_beams, "seed": seed,
               "exclude_history": exclude_history, "domains": {}}
    for domain in domains:
        data = build_evaluation_set(interactions, domain, tokenizer.domain_items(domain), split, max_users, negatives, seed)
        if catalogue_counts:
            counts = data.training_counts()
            tokenizer.set_item_counts({key: counts[key] for key in data.items})
        entry = {"role": "zero-shot" if domain in zero_shot_domains else "in-domain", "users": len(data.targets), "models": {}}
        for recommender in recommenders:
            entry["models"][recommender.name] = evaluate_recommender(recommender, data, exclude_history=exclude_history)
        results["domains"][domain] = entry
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--domains", nargs="+", required=True)
    parser.add_argument("--zero_shot", nargs="*", default=[], help="domains the model never trained on (labelled so)")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--max_users", type=int, default=0, help="sample this many users per domain (0: all)")
    parser.add_argument("--negatives", type=int, default=20)
    parser.add_argument("--num_beams", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--text_similarity_items", type=int, default=1)
    parser.add_argument("--code_score_weight", type=float, default=None,
                        help="the code head's weight in item scores for this run (default: the model's)")
    parser.add_argument("--catalogue_counts", action="store_true",
                        help="give the model each domain's item counts from its training part (a separate setting)")
    parser.add_argument("--exclude_history", action=argparse.BooleanOptionalAction, default=True,
                        help="full rankings leave out the items of the user's history (as the pipeline does)")
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--output", default=None, help="results JSON (default: <checkpoint>/eval_results.json)")
    args = parser.parse_args(argv)
    results = evaluate(args.checkpoint, args.corpus_dir, args.domains, args.zero_shot, args.split, args.max_users,
                       args.negatives, args.num_beams, args.batch_size, text_similarity_items=args.text_similarity_items,
                       cache_dir=args.cache_dir, catalogue_counts=args.catalogue_counts, exclude_history=args.exclude_history,
                       score_overrides={} if args.code_score_weight is None else {"code_score_weight": args.code_score_weight})
    output = Path(args.output or Path(args.checkpoint) / "eval_results.json")
    write_json_atomically(output, results)
    write_text_atomically(output.with_suffix(".md"), results_markdown(results) + "\n")
    print(results_markdown(results))
    return results


if __name__ == "__main__":
    main()
