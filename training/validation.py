"""Checkpoint selection during pretraining: validation metrics and the keeper of the best weights."""

from __future__ import annotations

import dataclasses

import torch

from modeling_recbase import ItemRanker
from tokenization_recbase import RecBaseTokenizer
from training.arguments import VALIDATION_METRICS
from training.evaluate import RecBaseRecommender
from training.protocols import EvaluationSet, evaluate_recommender


@torch.no_grad()
def validation_metrics(
    model: torch.nn.Module,
    tokenizer: RecBaseTokenizer,
    validation_sets: list[EvaluationSet],
    max_history_items: int,
    full_ranking: bool = True,
) -> dict[str, float]:
    """Each of ``VALIDATION_METRICS`` averaged over the validation sets, and each domain's metrics. The full
    ranking (Recall@10 / NDCG@10, history excluded, as in evaluation) runs when ``full_ranking`` or when it is
    cheap (the dense head alone ranks, no beam search)."""
    # The learned residual is measured on every validation domain, held-out ones included.
    policy = dataclasses.replace(model.ranking_policy, max_history_items=max_history_items, residual_domains=None)
    recommender = RecBaseRecommender(ItemRanker(model, tokenizer, policy), batch_size=32)
    first_items = [data.items[0] for data in validation_sets]
    cheap_ranking = model.config.dense_head and not any(policy.code_weights(first_items, dense_head=True))
    protocols = ("candidate_scoring", "full_ranking") if full_ranking or cheap_ranking else ("candidate_scoring",)
    per_domain = {
        data.domain: evaluate_recommender(recommender, data, ks=(10,), protocols=protocols) for data in validation_sets
    }
    means = {
        name: sum(m[name] for m in per_domain.values()) / len(per_domain)
        for name in VALIDATION_METRICS
        if name in next(iter(per_domain.values()))
    }
    return {**means, **{f"{name}_{domain}": value for domain, m in per_domain.items() for name, value in m.items()}}


class CheckpointSelector:
    """Keeps a copy of the weights at the best validation score seen so far, and says when ``patience``
    validations in a row have not beaten it (early stopping; ``patience`` 0 never stops)."""

    def __init__(self, metric: str, patience: int = 0) -> None:
        self.metric, self.patience = metric, patience
        self.best_step, self.best_score, self.best_state = -1, float("-inf"), None
        self.history: list[dict] = []
        self.validations_since_best = 0

    def update(self, step: int, scores: dict[str, float], model: torch.nn.Module) -> None:
        self.history.append({"step": step, **scores})
        if scores[self.metric] > self.best_score:
            self.best_step, self.best_score = step, scores[self.metric]
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.validations_since_best = 0
        else:
            self.validations_since_best += 1

    @property
    def should_stop(self) -> bool:
        return 0 < self.patience <= self.validations_since_best

    def summary(self) -> dict:
        """What ``validation.json`` holds: the kept step and its score, and every validation."""
        return {
            "best": {"step": self.best_step, "metric": self.metric, self.metric: self.best_score},
            "patience": self.patience,
            "stopped_early": self.should_stop,
            "history": self.history,
        }
