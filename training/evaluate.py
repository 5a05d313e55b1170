"""Evaluate a saved RecBase checkpoint and the baselines on the leave-one-out users of any domain.

The protocols (full ranking: Recall@K, NDCG@K; candidate scoring: AUC, GAUC) are in ``training.protocols``, the
baselines (random, popularity, zero-shot text similarity) in ``training.baselines``; every model is measured
on the same users in the same run. RecBase ranks by beam search constrained to the domain's item IDs (or its
dense head) and scores candidates as the pipeline does.

    python -m training.evaluate --checkpoint outputs/recbase-tiny --corpus_dir outputs/recbase-tiny-work/corpus \
        --domains amazon14_beauty amazon18_office ml-100k
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_recbase import RecBaseForCausalLM
from modeling_recbase.pipeline_recbase import rank_items, score_candidates
from tokenization_recbase import RecBaseTokenizer
from training.arguments import EvaluationArguments, parse_arguments
from training.baselines import PopularityRecommender, RandomRecommender, TextSimilarityRecommender
from training.checkpoint import load_checkpoint, write_json_atomically, write_text_atomically
from training.corpus import load_corpus
from training.embedding import EmbeddingCache
from training.protocols import (
    PROTOCOLS,
    RECBASE,
    EvaluationSet,
    build_evaluation_set,
    evaluate_recommender,
    results_markdown,
)


class RecBaseRecommender:
    """RecBase as a recommender: constrained beam search for ranking, code log-likelihood for scoring."""

    def __init__(self, model: RecBaseForCausalLM, tokenizer: RecBaseTokenizer, max_history_items: int | None = None,
                 num_beams: int = 20, batch_size: int = 16, name: str = RECBASE) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.max_history_items = max_history_items or model.config.max_history_items
        self.num_beams, self.batch_size = num_beams, batch_size

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        ranked = []
        for start in tqdm(range(0, len(data.histories), self.batch_size), desc=f"{data.domain} beam search", leave=False):
            batch = data.histories[start : start + self.batch_size]
            rows = rank_items(self.model, self.tokenizer, batch, data.items, max(self.num_beams, k), self.max_history_items,
                              exclude_history)
            ranked += [[key for key, _ in row[:k]] for row in rows]
        return ranked

    def score(self, data: EvaluationSet) -> list[list[float]]:
        """Sum of log-probabilities of each candidate's code tokens after the history: (users, candidates)."""
        scores = []
        for start in tqdm(range(0, len(data.histories), self.batch_size), desc=f"{data.domain} scoring", leave=False):
            scores += score_candidates(self.model, self.tokenizer, data.histories[start : start + self.batch_size],
                                       data.candidates[start : start + self.batch_size], self.max_history_items)
        return scores


def evaluate(args: EvaluationArguments, score_overrides: dict | None = None) -> dict:
    """Evaluate ``args.checkpoint`` (named ``args.model_name`` in the results) and, with ``args.baselines``, the
    baselines on ``args.domains``; returns the results dict.

    ``catalogue_counts``: the model is given each evaluated domain's item counts from that domain's training
    part (what popularity counts), the "zero-shot + catalogue counts" setting. ``score_overrides``: model config
    fields that only change scoring (``code_score_weight``, ``calibrated_code_score``, ``popularity_buckets`` 0 to
    leave out the popularity bias) set for this run; ``args.code_score_weight`` is one of them.
    ``exclude_history``: full rankings (of every model) leave out the items of the user's history."""
    model, tokenizer = load_checkpoint(args.checkpoint)
    overrides = {**({} if args.code_score_weight is None else {"code_score_weight": args.code_score_weight}),
                 **(score_overrides or {})}
    model.config.update(overrides)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    corpus = load_corpus(args.corpus_dir)
    recommenders = [RecBaseRecommender(model, tokenizer, args.max_history_items, args.num_beams, args.batch_size,
                                       args.model_name)]
    if args.baselines:
        recommenders += [
            TextSimilarityRecommender(tokenizer, EmbeddingCache(tokenizer.text_encoder, args.cache_dir),
                                      args.text_similarity_items),
            PopularityRecommender(), RandomRecommender(args.seed),
        ]
    results = {"protocols": PROTOCOLS, "split": args.split, "negatives": args.negatives, "num_beams": args.num_beams,
               "seed": args.seed, "exclude_history": args.exclude_history, "domains": {}}
    for domain in args.domains:
        data = build_evaluation_set(corpus, domain, tokenizer.domain_items(domain), args.split, args.max_users,
                                    args.negatives, args.seed)
        if args.catalogue_counts:
            counts = data.training_counts()
            tokenizer.set_item_counts({key: counts[key] for key in data.items})
        entry = {"role": "zero-shot" if domain in args.zero_shot else "in-domain", "users": len(data.targets), "models": {}}
        for recommender in recommenders:
            entry["models"][recommender.name] = evaluate_recommender(recommender, data, exclude_history=args.exclude_history)
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
