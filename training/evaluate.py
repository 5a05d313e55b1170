"""Evaluate a saved RecBase checkpoint and the baselines on the leave-one-out users of any domain.

The protocols (full ranking: Recall@K, NDCG@K; candidate scoring: AUC, GAUC) are in ``training.protocols``, the
baselines (random, popularity, zero-shot text similarity) in ``training.baselines``; every model is measured
on the same users in the same run. RecBase ranks and scores candidates as the pipeline does (its
``ItemRanker`` with the checkpoint's ranking policy), and beside it, with baselines, "RecBase prior (no training)":
the same model with nothing learned in the ranking (``RankingPolicy.prior_only``), and where the policy re-ranks
the prior's top items by the whitened prior, "RecBase prior, no re-rank (no training)": the plain cosine alone.

    python -m training.evaluate --checkpoint outputs/recbase-tiny --corpus_dir outputs/recbase-tiny-work/corpus \
        --domains amazon14_beauty amazon18_office ml-100k
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_recbase import ItemRanker
from tokenization_recbase.embedding_cache_recbase import EmbeddingCache
from training.arguments import EvaluationArguments, parse_arguments
from training.baselines import PopularityRecommender, RandomRecommender, TextSimilarityRecommender
from training.checkpoint import load_checkpoint, write_json_atomically, write_text_atomically
from training.corpus import load_corpus
from training.protocols import (
    PROTOCOLS,
    RECBASE,
    RECBASE_PLAIN_PRIOR,
    RECBASE_PRIOR,
    EvaluationSet,
    build_evaluation_set,
    evaluate_recommender,
    results_markdown,
)


class RecBaseRecommender:
    """RecBase as a recommender: ``ItemRanker.rank`` for the full ranking, ``ItemRanker.score`` for candidates."""

    def __init__(self, ranker: ItemRanker, batch_size: int = 16, name: str = RECBASE) -> None:
        self.ranker, self.batch_size, self.name = ranker, batch_size, name
        ranker.model.eval()

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        ranked = []
        for start in tqdm(range(0, len(data.histories), self.batch_size), desc=f"{data.domain} ranking", leave=False):
            rows = self.ranker.rank(data.histories[start : start + self.batch_size], data.items, k, exclude_history)
            ranked += [[key for key, _ in row] for row in rows]
        return ranked

    def score(self, data: EvaluationSet) -> list[list[float]]:
        """Each candidate's score after the history: (users, candidates)."""
        scores = []
        for start in tqdm(range(0, len(data.histories), self.batch_size), desc=f"{data.domain} scoring", leave=False):
            end = start + self.batch_size
            scores += self.ranker.score(data.histories[start:end], data.candidates[start:end])
        return scores


def evaluate(args: EvaluationArguments, ranking: dict | None = None) -> dict:
    """Evaluate ``args.checkpoint`` (named ``args.model_name`` in the results) and, with ``args.baselines``, the
    baselines on ``args.domains``; returns the results dict.

    ``catalogue_counts``: the model is given each evaluated domain's item counts from that domain's training
    part (what popularity counts), the "zero-shot + catalogue counts" setting, with their weight chosen on that
    training part by leave-last-out (``ItemRanker.fit_count_weight``, reported as the entry's
    ``count_weight_fit``). The checkpoint ranks with its own
    ranking policy, changed for this run by ``args.ranking_overrides()`` and by ``ranking`` (``RankingPolicy``
    fields). ``exclude_history``: full rankings (of every model) leave out the items of the user's history."""
    if not (args.checkpoint and args.corpus_dir and args.domains):
        raise ValueError("evaluation needs a checkpoint, a corpus_dir and domains")
    model, tokenizer = load_checkpoint(args.checkpoint)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    policy = dataclasses.replace(model.ranking_policy, **{**args.ranking_overrides(), **(ranking or {})})
    corpus = load_corpus(args.corpus_dir)
    recommenders = [RecBaseRecommender(ItemRanker(model, tokenizer, policy), args.batch_size, args.model_name)]
    if args.baselines and model.config.dense_head:  # the training-free prior, which a learned part must beat
        recommenders.append(
            RecBaseRecommender(ItemRanker(model, tokenizer, policy.prior_only()), args.batch_size, RECBASE_PRIOR)
        )
        if policy.whitened_rerank_top:  # what the re-rank adds to the prior, in the same run
            plain = dataclasses.replace(policy.prior_only(), whitened_rerank_top=0)
            recommenders.append(
                RecBaseRecommender(ItemRanker(model, tokenizer, plain), args.batch_size, RECBASE_PLAIN_PRIOR)
            )
    if args.baselines:
        recommenders += [
            TextSimilarityRecommender(
                tokenizer, EmbeddingCache(tokenizer.text_encoder, args.cache_dir), args.text_similarity_items
            ),
            PopularityRecommender(),
            RandomRecommender(args.seed),
        ]
    results = {
        "protocols": PROTOCOLS,
        "split": args.split,
        "negatives": args.negatives,
        "num_beams": policy.num_beams,
        "seed": args.seed,
        "exclude_history": args.exclude_history,
        "ranking_policy": dataclasses.asdict(policy),
        "domains": {},
    }
    for domain in args.domains:
        data = build_evaluation_set(
            corpus, domain, tokenizer.domain_items(domain), args.split, args.max_users, args.negatives, args.seed
        )
        entry = {
            "role": "zero-shot" if domain in args.zero_shot else "in-domain",
            "users": len(data.targets),
            "models": {},
        }
        if args.catalogue_counts:  # the counts of the training part, and their weight fit on it
            ranker = recommenders[0].ranker
            ndcg = ranker.fit_count_weight(data.train_histories, seed=args.seed)
            entry["count_weight_fit"] = {
                "weight": ranker.policy.count_weights[domain],
                "ndcg@10 by weight": {f"{weight:g}": value for weight, value in ndcg.items()},
            }
        for recommender in recommenders:
            entry["models"][recommender.name] = evaluate_recommender(
                recommender, data, exclude_history=args.exclude_history
            )
        results["domains"][domain] = entry
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments((EvaluationArguments,), argv, __doc__)
    results = evaluate(args)
    output = Path(args.output or Path(args.checkpoint) / "eval_results.json")
    write_json_atomically(output, results)
    write_text_atomically(output.with_suffix(".md"), results_markdown(results) + "\n")
    print(results_markdown(results))
    return results


if __name__ == "__main__":
    main()
