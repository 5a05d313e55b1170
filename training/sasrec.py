"""SASRec (Kang and McAuley, 2018), the in-domain baseline RecBase is measured against: self-attention over one
domain's item IDs, trained on that domain alone.

Each training history (the corpus's ``train`` split) is cut, from its end, into windows of ``max_length + 1``
items; position ``t`` of a window predicts item ``t + 1`` with a cross-entropy over *every* item of the domain
(no sampled negatives). Training stops early when validation NDCG@10 (the domain's ``validation`` split,
history excluded, as in evaluation) has not improved for ``patience`` epochs, or when ``budget_minutes`` of
wall time are spent; the best epoch's weights are kept. ``SASRecRecommender`` then ranks and scores the
evaluation users as every other recommender does (``training.protocols``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping

import torch
from datasets import Dataset
from torch import nn

from training.arguments import EvaluationArguments, SASRecArguments
from training.pretraining_data import windows_from_end
from training.protocols import SASREC, EvaluationSet, build_evaluation_set, evaluate_recommender

PADDING = 0  # item IDs are 1..num_items; 0 pads a window on the right


class SASRec(nn.Module):
    """A causal transformer encoder over item-ID embeddings; the next item's logits are the output's dot product
    with every item's (tied) embedding."""

    def __init__(self, num_items: int, args: SASRecArguments) -> None:
        super().__init__()
        self.num_items = num_items
        self.item_embeddings = nn.Embedding(num_items + 1, args.hidden_size, padding_idx=PADDING)
        self.position_embeddings = nn.Embedding(args.max_length, args.hidden_size)
        self.dropout = nn.Dropout(args.dropout)
        layer = nn.TransformerEncoderLayer(
            args.hidden_size,
            args.num_heads,
            dim_feedforward=args.hidden_size,  # SASRec's point-wise feed-forward keeps the width
            dropout=args.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, args.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(args.hidden_size)
        # Small embeddings (nn.Embedding's default is N(0, 1)): the tied output starts with near-uniform logits.
        nn.init.normal_(self.item_embeddings.weight, std=0.02)
        nn.init.normal_(self.position_embeddings.weight, std=0.02)
        with torch.no_grad():
            self.item_embeddings.weight[PADDING].zero_()

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """(batch, length) right-padded item IDs -> (batch, length, hidden). A causal mask: padding sits after every
        real item, so no real position ever reads it."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        hidden = self.dropout(self.item_embeddings(input_ids) + self.position_embeddings(positions))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=input_ids.device)
        return self.norm(self.encoder(hidden, mask=causal, is_causal=True))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., num_items): column ``i`` is item ID ``i + 1``; padding has no column."""
        return hidden @ self.item_embeddings.weight[1:].T

    def loss(self, input_ids: torch.LongTensor, labels: torch.LongTensor) -> torch.Tensor:
        """Mean cross-entropy over all items at every position whose label is an item (``labels`` 0: padding)."""
        hidden = self(input_ids)[labels != PADDING]  # (positions, hidden)
        return nn.functional.cross_entropy(self.logits(hidden), labels[labels != PADDING] - 1)

    def last_hidden(self, input_ids: torch.LongTensor, lengths: torch.LongTensor) -> torch.Tensor:
        """(batch, hidden): the output at each row's last real item."""
        return self(input_ids)[torch.arange(len(lengths)), lengths - 1]


def pad_right(rows: list[list[int]]) -> torch.LongTensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [PADDING] * (width - len(row)) for row in rows], dtype=torch.long)


class SASRecRecommender:
    """A trained ``SASRec`` over one domain's items, as a recommender of ``training.protocols``."""

    name = SASREC

    def __init__(self, model: SASRec, items: list[str], max_length: int, batch_size: int = 256) -> None:
        self.model, self.items, self.max_length, self.batch_size = model, list(items), max_length, batch_size
        self.ids = {key: i + 1 for i, key in enumerate(items)}
        if len(self.ids) != model.num_items:
            raise ValueError(f"SASRec has {model.num_items} items, the recommender was given {len(self.ids)}")

    @torch.no_grad()
    def item_scores(self, histories: list[list[str]]) -> torch.Tensor:
        """(users, num_items): every item's logit after each history (its last ``max_length`` items)."""
        self.model.eval()
        scores = []
        for start in range(0, len(histories), self.batch_size):
            rows = [
                [self.ids[key] for key in history[-self.max_length :]]
                for history in histories[start : start + self.batch_size]
            ]
            lengths = torch.tensor([len(row) for row in rows])
            scores.append(self.model.logits(self.model.last_hidden(pad_right(rows), lengths)))
        return torch.cat(scores)

    def rank(self, data: EvaluationSet, k: int, exclude_history: bool) -> list[list[str]]:
        scores = self.item_scores(data.histories)
        if exclude_history:
            for row, history in enumerate(data.histories):
                scores[row, [self.ids[key] - 1 for key in set(history)]] = float("-inf")
        return [[self.items[i] for i in row] for row in scores.topk(k, dim=-1).indices.tolist()]

    def score(self, data: EvaluationSet) -> list[list[float]]:
        scores = self.item_scores(data.histories)
        return [scores[user, [self.ids[key] - 1 for key in row]].tolist() for user, row in enumerate(data.candidates)]


def train_sasrec(
    corpus: Mapping[str, Dataset], domain: str, items: list[str], args: SASRecArguments
) -> tuple[SASRecRecommender, dict]:
    """Train SASRec on ``domain``'s training histories; returns the recommender (best validation epoch) and a log:
    epochs run, the kept epoch and its validation NDCG@10, wall minutes and trainable parameters."""
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = SASRec(len(items), args)
    recommender = SASRecRecommender(model, items, args.max_length)
    histories = list(corpus["train"].filter(lambda d: d == domain, input_columns="domain")["items"])
    ids = [[recommender.ids[key] for key in history] for history in histories]
    windows = [window for history in ids for window in windows_from_end(history, args.max_length + 1)]
    if not windows:
        raise ValueError(f"domain {domain!r} has no training history of 2 items or more for SASRec")
    validation = build_evaluation_set(corpus, domain, items, "validation", args.validation_users, 0, args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.98))
    best = {"epoch": 0, "ndcg@10": -1.0, "state": None}
    epoch = 0
    for epoch in range(1, args.max_epochs + 1):
        model.train()
        rng.shuffle(windows)
        for start in range(0, len(windows), args.batch_size):
            batch = pad_right(windows[start : start + args.batch_size])
            loss = model.loss(batch[:, :-1], batch[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ndcg = evaluate_recommender(recommender, validation, ks=(10,), protocols=("full_ranking",))["ndcg@10"]
        if ndcg > best["ndcg@10"]:
            best = {"epoch": epoch, "ndcg@10": ndcg, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        out_of_time = time.perf_counter() - started > 60 * args.budget_minutes
        if epoch - best["epoch"] >= args.patience or out_of_time:
            break
    model.load_state_dict(best["state"])
    log = {
        "epochs": epoch,
        "best_epoch": best["epoch"],
        "validation_ndcg@10": best["ndcg@10"],
        "train_minutes": (time.perf_counter() - started) / 60,
        "trainable_parameters": sum(p.numel() for p in model.parameters()),
        "windows": len(windows),
        "steps_per_epoch": math.ceil(len(windows) / args.batch_size),
    }
    return recommender, log


def evaluate_sasrec(
    corpus: Mapping[str, Dataset],
    domain: str,
    items: list[str],
    args: SASRecArguments,
    evaluation: EvaluationArguments,
) -> tuple[dict[str, float], dict]:
    """SASRec trained on ``domain`` and measured on the users ``training.evaluate`` draws with ``evaluation`` (same
    split, sample, negatives and ``items`` order, so the same candidates): its metrics and its training log."""
    recommender, log = train_sasrec(corpus, domain, items, args)
    data = build_evaluation_set(
        corpus, domain, items, evaluation.split, evaluation.max_users, evaluation.negatives, evaluation.seed
    )
    return evaluate_recommender(recommender, data, exclude_history=evaluation.exclude_history), log
