"""Catalogue counts without training: the prior plus ``weight * log(1 + count)``, against the learned popularity bias.

The dense head's prior scores an item by cosine / temperature, a logit; adding ``log(1 + count)`` multiplies each
item's probability by its smoothed count (weight 1: a product of the two experts). The weight is chosen on the
pretraining domains' validation users (never on the test domains), by the worst domain's NDCG@10 as a share of
the better of popularity and the prior there; the test domains are reported with that weight. Beside it, each
domain's own weight chosen on its training part by leave-last-out (``ItemRanker.fit_count_weight``, what
``training.evaluate --catalogue_counts`` ranks with): it needs only the log the counts come from.

    python -m benchmarks.counts_with_prior --checkpoint outputs/recbase-tiny \
        --corpus_dir outputs/recbase-tiny-work/corpus

Writes ``benchmarks/results/counts_with_prior.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from modeling_recbase import ItemRanker
from modeling_recbase.ranking_recbase import COUNT_WEIGHTS
from training.baselines import PopularityRecommender
from training.bundled_domains import DEFAULT_ZERO_SHOT_DOMAINS
from training.checkpoint import load_checkpoint, write_text_atomically
from training.corpus import load_corpus
from training.protocols import POPULARITY, EvaluationSet, build_evaluation_set, evaluate_recommender

RESULTS = Path(__file__).resolve().parent / "results" / "counts_with_prior"
METRICS = ("ndcg@10", "recall@10", "auc", "gauc")
LEARNED = "prior + learned popularity bias"
FITTED = "prior + weight fit on the domain's own log"


def mixture(weight: float) -> str:
    """The results' name of the prior plus ``weight`` x log(1 + count)."""
    return f"prior + {weight:g} x log(1 + count)"


class ScoreTableRecommender:
    """Ranks and scores from a (users, items) score table computed once: ``scores + weight * log1p(counts)``."""

    def __init__(self, data: EvaluationSet, scores: torch.Tensor, log_counts: torch.Tensor, weight: float) -> None:
        self.index = {key: i for i, key in enumerate(data.items)}
        self.table = scores + weight * log_counts  # (users, items)

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        table = self.table.clone()
        if exclude_history:
            for row, history in enumerate(data.histories):
                table[row, [self.index[key] for key in set(history)]] = float("-inf")
        return [[data.items[i] for i in row] for row in table.topk(k, dim=-1).indices.tolist()]

    def score(self, data: EvaluationSet) -> list[list[float]]:
        return [
            self.table[row, [self.index[key] for key in keys]].tolist() for row, keys in enumerate(data.candidates)
        ]


@torch.no_grad()
def full_scores(ranker: ItemRanker, data: EvaluationSet, batch_size: int = 64) -> torch.Tensor:
    """(users, items): the ranker's dense score of every item of the domain after each history."""
    return torch.cat(
        [
            ranker.dense_scores(data.histories[start : start + batch_size], data.items).cpu()
            for start in range(0, len(data.histories), batch_size)
        ]
    )


def measure(model, tokenizer, corpus, domain: str, split: str, max_users: int, seed: int) -> dict:
    """Every weight, the learned bias and popularity on one domain's users, with the counts of its training part."""
    data = build_evaluation_set(corpus, domain, tokenizer.domain_items(domain), split, max_users, 20, seed)
    counts = data.training_counts()
    tokenizer.set_item_counts({key: counts[key] for key in data.items})
    log_counts = torch.tensor([float(counts[key]) for key in data.items]).log1p()
    prior = ItemRanker(model, tokenizer, model.ranking_policy.prior_only())
    with_counts = dataclasses.replace(model.ranking_policy.prior_only(), popularity_bias=True)
    learned, fitted = ItemRanker(model, tokenizer, with_counts), ItemRanker(model, tokenizer, with_counts)
    fit = fitted.fit_count_weight(data.train_histories, seed=seed)
    prior_scores, learned_scores = full_scores(prior, data), full_scores(learned, data)
    rows = {
        mixture(weight): evaluate_recommender(ScoreTableRecommender(data, prior_scores, log_counts, weight), data)
        for weight in COUNT_WEIGHTS
    }
    rows[LEARNED] = evaluate_recommender(ScoreTableRecommender(data, learned_scores, log_counts, 0.0), data)
    rows[FITTED] = evaluate_recommender(ScoreTableRecommender(data, full_scores(fitted, data), log_counts, 0.0), data)
    rows[POPULARITY] = evaluate_recommender(PopularityRecommender(), data)
    return {
        "split": split,
        "users": len(data.targets),
        "fitted_weight": fitted.policy.count_weights[domain],
        "leave_last_out_ndcg@10": {f"{weight:g}": value for weight, value in fit.items()},
        "models": rows,
    }


def worst_share(results: dict, name: str) -> float:
    """The worst domain's NDCG@10 of ``name`` over the better of popularity and the prior (weight 0) there."""
    shares = []
    for entry in results.values():
        models = entry["models"]
        best = max(models[POPULARITY]["ndcg@10"], models[mixture(0)]["ndcg@10"])
        shares.append(models[name]["ndcg@10"] / best if best else 1.0)
    return min(shares)


def markdown(results: dict, choice: str, shares: dict[str, float], command: str) -> str:
    lines = [
        "# Catalogue counts without training: the prior plus weight x log(1 + count) (issue 19)",
        "",
        f"Command (2 CPU cores): `{command}`",
        "",
        "Validation users of the pretraining domains choose the weight (worst domain's NDCG@10 as a share of the "
        "better of popularity and the prior); the test domains are reported with every weight, the chosen one "
        "marked. History excluded; AUC/GAUC over 20 sampled negatives.",
        "",
        "Worst validation domain's share, per weight: "
        + ", ".join(f"{name}: {share:.3f}" for name, share in shares.items())
        + f". Chosen: **{choice}**.",
        "",
        "| domain (split, users) | model | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for domain, entry in results.items():
        for name, metrics in entry["models"].items():
            mark = " (chosen)" if name == choice else ""
            mark += f" (weight {entry['fitted_weight']:g})" if name == FITTED else ""
            values = " | ".join(f"{metrics[m]:.4f}" for m in METRICS)
            lines.append(f"| {domain} ({entry['split']}, {entry['users']}) | {name}{mark} | {values} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--test_domains", nargs="+", default=list(DEFAULT_ZERO_SHOT_DOMAINS))
    parser.add_argument("--max_users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model, tokenizer = load_checkpoint(args.checkpoint)
    model.eval()
    corpus = load_corpus(args.corpus_dir)
    validation_domains = [d for d in sorted(tokenizer.domains) if d not in args.test_domains]
    validation = {
        d: measure(model, tokenizer, corpus, d, "validation", args.max_users, args.seed) for d in validation_domains
    }
    shares = {name: worst_share(validation, name) for name in [*map(mixture, COUNT_WEIGHTS), LEARNED, FITTED]}
    choice = max(shares, key=shares.get)
    test = {d: measure(model, tokenizer, corpus, d, "test", 0, args.seed) for d in args.test_domains}
    results = {**validation, **test}
    command = "python -m benchmarks.counts_with_prior " + " ".join(sys.argv[1:] if argv is None else argv)
    output = Path(args.output)
    write_text_atomically(
        output.with_suffix(".json"),
        json.dumps(
            {
                "choice": choice,
                "worst_validation_share": shares,
                "domains": results,
                "minutes": (time.perf_counter() - started) / 60,
            },
            indent=2,
        )
        + "\n",
    )
    write_text_atomically(output.with_suffix(".md"), markdown(results, choice, shares, command))
    print(markdown(results, choice, shares, command))


if __name__ == "__main__":
    main()
