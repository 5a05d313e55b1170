"""Screen frame-invariant learned parts of the dense head against its training-free prior, on held-out domains.

    python -m benchmarks.frame_invariant_screen --tokenizer_dir outputs/recbase-tiny-work/item-tokenizer \
        --corpus_dir outputs/recbase-tiny-work/corpus

The prior scores an item by the cosine between its unit content vector (its aligned text embedding) and the
recency-weighted sum of the history's unit vectors (decay 0.5 per step back, 10 items), less that cosine's mean
over the domain. Each learned part below reads only quantities that mean the same in every domain, starts as the
prior exactly, and is trained with the dense head's loss (softmax over the next item and 128 items of its domain,
one domain per batch) on every pretraining domain but one, then measured on the held-out one's validation split
(never the test domains, never a test split). Each fold rotates the held-out domain; the table gives the learned
part minus the prior in every metric, so a part earns its place only where the worst fold's gain is positive.

- ``history weights`` (``HistoryWeights``): each history item's weight is ``decay ** k * exp(g(features))``, ``g`` a
  small MLP, zero at init, of its position, its cosine to the last item, its mean cosine to the other history items,
  whether it repeats one, and its norm relative to the history's mean norm;
- ``axis weights``: one learned weight per principal axis of the aligned frame (axes are ordered by variance in
  every domain), applied to query and items before the cosine;
- both together;
- ``pair kernel`` (``PairKernel``): the prior sums, over the history, each item's weight times its centred cosine
  to the candidate; this part passes each of those cosines through a learned piecewise-linear function of its own
  (one per history position), the identity at init, so it can learn a sharper, max-like match or a flatter one;
- ``pair kernel, domains alike``: the same, trained with every pretraining domain drawn equally often (the other
  parts draw a domain by the square root of its size), so the popularity-driven domains do not outweigh the
  catalogues;
- ``pair kernel, hard negatives`` and ``history weights, hard negatives``: trained with half of the 128 negatives
  taken from the items the prior ranks highest (``hard_negatives``), so the loss is about the top of the list;
- ``pair kernel, catalogue softmax`` and ``history weights, catalogue softmax``: trained with the uniform negatives'
  logits corrected by the log of their sampling probability (``sampled_loss``), so the loss estimates the softmax
  over the whole catalogue instead of over 129 items;
- ``shared adapter``: one low-rank linear map (``ADAPTER_RANK``) of the text embeddings, shared by every domain and the
  identity at init, applied to history and items before the cosine. It reads the shared semantic frame, each domain's
  embeddings centred but not rotated (``DomainTable(..., shared_frame=True)``), so its inputs mean the same in every
  domain without any per-domain rotation; ``shared adapter, catalogue softmax`` trains it with ``sampled_loss``'s
  correction;
- ``candidate typicality`` (``TypicalityBias``): every part above reads the candidate only through its cosines to the
  history. This one adds a learned bias of the candidate's own place in its catalogue, from the catalogue alone: its
  distance to the domain's centre and its mean cosine to its ten nearest catalogue neighbours (how typical it is),
  each as a z-score within its domain, and each times the history's recency-weighted mean of the same feature (a user
  of typical items may want typical ones). Zero at init; norms and cosines are the same in every frame;
- ``pair kernel, worst domain`` and ``history weights, worst domain``: every part above helps some held-out domains
  and hurts others, and the rule asks for the worst one. These train for it (a group-robust objective, as in group
  DRO): every step takes 256 pairs split evenly over the training domains and minimises their losses above the
  prior's on the same batches, each domain weighted by the running sum of its excess (``WorstDomainWeights``), so the
  domain the part serves worst relative to the prior gets the step; ``history weights, worst domain, catalogue
  softmax`` does the same with ``sampled_loss``'s correction;
- ``history weights, full softmax``, ``pair kernel, full softmax``, ``shared adapter, full softmax`` and ``axis
  weights, full softmax``: every loss above is a softmax over the next item and 128 sampled items, which a part wins
  by separating the next item from random ones. These are trained with the exact cross-entropy of the next item over
  the whole catalogue, the history's other items masked (``Part.full_softmax``), the full ranking the metrics measure;
  ``..., top pairs`` counts only the pairs whose next item the prior already ranks in its top ``TOP_PAIRS`` (where
  NDCG@10 can change); ``axis weights, full and sampled softmax`` adds the plain sampled loss, so the bulk of the list
  (what AUC counts) is in the loss beside its top.

Two training-free diagnostics sit beside the prior in every fold: ``--whitening_powers`` measures the whitened prior
(``whitened_prior``: each principal axis scaled by its spread to a power, what the axis weights learn) alone and summed
with the prior (``ScoreSum``); ``--rerank_top K`` measures the prior with only its top K items reordered by a whitened
prior or by each trained part (``TopReranked``), which leaves the order of the rest, and so nearly all of AUC, as the
prior's.

``--measure_every N`` also measures each part after every N training steps, so one run gives the learning curve (an
early stop chosen on it is chosen on the held-out pretraining domains, never on a test domain).

``--train_on_held_out`` is a diagnostic: each part is trained on the held-out domain's own training split, which
tells a part that cannot help at all from one that does not transfer.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tokenization_recbase import RecBaseTokenizer
from training.checkpoint import write_json_atomically, write_text_atomically
from training.corpus import load_corpus
from training.protocols import build_evaluation_set
from training.ranking_metrics.ranking_metrics import candidate_metrics, ranking_means

HISTORY_ITEMS, DECAY, TEMPERATURE = 10, 0.5, 0.1  # the dense head's defaults (RecBaseConfig)
RESULTS = Path(__file__).parent / "results" / "frame_invariant_screen"  # .json and .md


HISTORY_FEATURES = 4  # besides the position: cosine to the last item, to the others, repeat, relative norm


class HistoryWeights(nn.Module):
    """Frame-invariant weights of the history items in the dense head's prior.

    Item k steps back gets ``dense_history_decay ** k * exp(g(features))``, ``g`` a small MLP whose output layer
    starts at zero, so at init the prior is the decay formula exactly. The features mean the same in every domain,
    whatever its frame: the item's position, its cosine to the last item, its mean cosine to the other history
    items, whether it repeats one of them, and its vector's norm (its distance to the domain's centre) relative to
    the history's mean norm. So what it learns on the pretraining domains can carry to a domain never seen."""

    def __init__(self, items: int = HISTORY_ITEMS, size: int = 32) -> None:
        super().__init__()
        self.items = items
        self.fc_in = nn.Linear(items + HISTORY_FEATURES, size)
        self.fc_out = nn.Linear(size, 1)
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors (..., items, dim) of the history, newest first, zero where there is no item -> (..., items)
        log-weights (added to ``k * log(decay)``)."""
        norms = vectors.norm(dim=-1)  # (..., K)
        valid = norms > 0
        unit = F.normalize(vectors, dim=-1)
        cosines = unit @ unit.transpose(-1, -2)  # (..., K, K)
        count = valid.sum(-1, keepdim=True)
        to_others = ((cosines * valid[..., None, :]).sum(-1) - valid.float()) / (count - 1).clamp(min=1)
        repeats = ((cosines > 1 - 1e-6) & valid[..., None, :]).sum(-1) > 1
        mean_norm = norms.sum(-1, keepdim=True) / count.clamp(min=1)
        relative_norm = torch.log(norms.clamp(min=1e-12) / mean_norm.clamp(min=1e-12))
        position = torch.eye(self.items, device=vectors.device).expand(*vectors.shape[:-2], -1, -1)
        features = (
            torch.cat(
                [
                    position,
                    cosines[..., 0, None],
                    to_others[..., None],
                    repeats[..., None].float(),
                    relative_norm[..., None],
                ],
                -1,
            )
            * valid[..., None]
        )
        return self.fc_out(F.gelu(self.fc_in(features))).squeeze(-1)


KERNEL_KNOTS = torch.linspace(-0.2, 0.8, 6)  # centred cosines lie in about [-0.3, 0.9]


class PairKernel(nn.Module):
    """A learned function of each history item's centred cosine to the candidate, the identity at init.

    ``phi_k(s) = s + sum_j a_kj * relu(s - t_j)`` for the item ``k`` steps back, knots ``t_j`` fixed, ``a`` zero at
    init. Cosines between vectors of one frame mean the same whatever the frame's rotation: it is frame-invariant."""

    def __init__(self, items: int = HISTORY_ITEMS) -> None:
        super().__init__()
        self.register_buffer("knots", KERNEL_KNOTS.clone())
        self.slopes = nn.Parameter(torch.zeros(items, len(KERNEL_KNOTS)))

    def forward(self, cosines: torch.Tensor) -> torch.Tensor:
        """cosines (B, K, C) -> (B, K, C)."""
        hinges = F.relu(cosines[..., None] - self.knots)  # (B, K, C, J)
        return cosines + torch.einsum("bkcj,kj->bkc", hinges, self.slopes)


TYPICALITY_NEIGHBOURS = 10
TYPICALITY_KNOTS = torch.linspace(-2.0, 2.0, 5)  # z-scores


@torch.no_grad()
def typicality_features(vectors: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(C, D) one domain's centred content vectors -> (C, 2): the log distance to the domain's centre and the mean
    cosine to the ``TYPICALITY_NEIGHBOURS`` nearest other items, each z-scored over the domain. Both read only norms
    and cosines, so they do not depend on the frame's rotation."""
    unit = F.normalize(vectors.float(), dim=-1)
    neighbours = min(TYPICALITY_NEIGHBOURS, len(unit) - 1)
    density = torch.cat(
        [
            (unit[start : start + chunk] @ unit.T).topk(neighbours + 1, dim=-1).values[:, 1:].mean(-1)
            for start in range(0, len(unit), chunk)
        ]
    )  # the top cosine is the item itself
    features = torch.stack([vectors.float().norm(dim=-1).clamp(min=1e-12).log(), density], -1)
    return (features - features.mean(0)) / features.std(0).clamp(min=1e-12)


class TypicalityBias(nn.Module):
    """A learned bias of each candidate's typicality features, and of each times the history's mean of it.

    ``b(c) = sum_f phi_f(z_cf) + beta_f * z_cf * m_f``, ``z_c`` the candidate's features (``typicality_features``),
    ``m`` their recency-weighted mean over the history, ``phi_f`` piecewise linear; zero at init."""

    def __init__(self, features: int = 2) -> None:
        super().__init__()
        self.register_buffer("knots", TYPICALITY_KNOTS.clone())
        self.slopes = nn.Parameter(torch.zeros(features, len(TYPICALITY_KNOTS) + 1))  # a linear term, then hinges
        self.with_history = nn.Parameter(torch.zeros(features))

    def forward(self, items: torch.Tensor, history: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """items (C, F) or (B, C, F); history (B, K, F); weights (B, K) -> (B, C)."""
        basis = torch.cat([items[..., None], F.relu(items[..., None] - self.knots)], -1)  # (..., C, F, 1 + J)
        alone = torch.einsum("...cfj,fj->...c", basis, self.slopes)
        mean = (weights[..., None] * history).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-12)  # (B, F)
        return alone + (items * (mean * self.with_history)[:, None]).sum(-1)  # items broadcast to (B, C, F)


class DomainTable:
    """One domain's items: keys, content vectors and unit vectors.

    The content vectors are in the domain's aligned frame (centred, rotated onto its principal axes), or with
    ``shared_frame`` rotated back into the text encoder's own frame, the same for every domain (centred only).
    Cosines and norms are the same in both, so every part but the axis weights and the shared adapter scores alike."""

    def __init__(self, tokenizer: RecBaseTokenizer, domain: str, shared_frame: bool = False) -> None:
        self.keys = tokenizer.domain_items(domain)
        self.row = {key: i for i, key in enumerate(self.keys)}
        self.vectors = tokenizer.item_vectors(self.keys).float()
        if shared_frame:  # aligned = (embedding - mean) @ rotation, the rotation orthogonal
            self.vectors = self.vectors @ tokenizer.domain_alignments[domain]["rotation"].float().T
        self.unit = F.normalize(self.vectors, dim=-1)
        self._typicality: torch.Tensor | None = None

    @property
    def typicality(self) -> torch.Tensor:
        """(C, 2) ``typicality_features`` of the items, computed on first use."""
        if self._typicality is None:
            self._typicality = typicality_features(self.vectors)
        return self._typicality

    def history_rows(self, histories: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) rows of each history's last K items, newest first (0 where none), and (B, K) where there is one."""
        rows = torch.zeros(len(histories), HISTORY_ITEMS, dtype=torch.long)
        valid = torch.zeros(len(histories), HISTORY_ITEMS, dtype=torch.bool)
        for b, history in enumerate(histories):
            recent = [self.row[key] for key in history[-HISTORY_ITEMS:]][::-1]
            rows[b, : len(recent)], valid[b, : len(recent)] = torch.tensor(recent, dtype=torch.long), True
        return rows, valid

    def history_typicality(self, histories: list[list[str]]) -> torch.Tensor:
        """(B, K, 2) the typicality features of each history's last K items, newest first, zero where none."""
        rows, valid = self.history_rows(histories)
        return self.typicality[rows] * valid[..., None]

    def history_mask(self, histories: list[list[str]]) -> torch.Tensor:
        """(B, C): True at every item of each history (what full ranking excludes)."""
        mask = torch.zeros(len(histories), len(self.keys), dtype=torch.bool)
        for row, history in enumerate(histories):
            mask[row, [self.row[key] for key in history]] = True
        return mask

    def history_vectors(self, histories: list[list[str]]) -> torch.Tensor:
        """(B, K, D): the content vectors of each history's last K items, newest first, zero where none."""
        rows, valid = self.history_rows(histories)
        return self.vectors[rows] * valid[..., None]


ADAPTER_RANK = 32


class FrameInvariantHead(nn.Module):
    """The prior, with learned history weights, per-axis weights, a pair kernel, a shared adapter and/or a candidate
    typicality bias, each the identity at init."""

    def __init__(
        self,
        history_weights: bool,
        axis_weights: bool,
        dim: int,
        pair_kernel: bool = False,
        adapter: bool = False,
        typicality: bool = False,
    ) -> None:
        super().__init__()
        self.history_weights = HistoryWeights() if history_weights else None
        self.log_axis = nn.Parameter(torch.zeros(dim)) if axis_weights else None
        if pair_kernel and axis_weights:
            raise ValueError(
                "the pair kernel reads cosines in the aligned frame; it is not combined with axis weights"
            )
        if adapter and (axis_weights or pair_kernel):
            raise ValueError("the shared adapter is not combined with axis weights or the pair kernel")
        self.pair_kernel = PairKernel() if pair_kernel else None
        # v -> v + (v @ down) @ up, up zero at init: the identity, and the same map for every domain.
        self.adapter_down = nn.Parameter(torch.randn(dim, ADAPTER_RANK) / dim**0.5) if adapter else None
        self.adapter_up = nn.Parameter(torch.zeros(ADAPTER_RANK, dim)) if adapter else None
        self.typicality = TypicalityBias() if typicality else None
        self.register_buffer("decay", DECAY ** torch.arange(HISTORY_ITEMS, dtype=torch.float))

    def weights(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, K, D) history vectors -> (B, K) weights of their unit vectors, zero where there is no item."""
        weights = self.decay * (vectors.norm(dim=-1) > 0)
        if self.history_weights is not None:
            weights = weights * torch.exp(self.history_weights(vectors))
        return weights

    def transform(self, vectors: torch.Tensor) -> torch.Tensor:
        """(..., D) unit vectors -> (..., D) unit vectors: reweighted axes or the adapter's map, else unchanged."""
        if self.log_axis is not None:
            return F.normalize(vectors * torch.exp(self.log_axis), dim=-1)
        if self.adapter_up is not None:
            return F.normalize(vectors + (vectors @ self.adapter_down) @ self.adapter_up, dim=-1)
        return vectors

    def scores(
        self,
        vectors: torch.Tensor,
        items: torch.Tensor,
        centre: torch.Tensor,
        typicality: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """vectors (B, K, D) of the history; items (B, C, D) or (C, D) unit vectors; centre (D,) -> (B, C).
        ``typicality``: the items' (like items, F features) and the history's (B, K, F) ``typicality_features``,
        needed by the typicality bias only.

        The prior: the cosine between q, the weighted sum of the history's unit vectors, and the centred item, over
        T. Written per history item it is ``sum_k w_k s_k / |q| / T``, ``s_k`` the centred cosine to item k; the
        pair kernel replaces ``s_k`` by ``phi_k(s_k)``; the typicality bias adds a term of the candidate alone."""
        weights = self.weights(vectors)  # (B, K)
        query = (weights[..., None] * F.normalize(vectors, dim=-1)).sum(1)  # (B, D)
        items = self.transform(items) - centre
        items_t = items.T if items.ndim == 2 else items.transpose(-1, -2)  # (D, C) or (B, D, C)
        if self.pair_kernel is None:
            scores = (F.normalize(self.transform(query), dim=-1)[:, None] @ items_t).squeeze(1) / TEMPERATURE
        else:
            cosines = self.pair_kernel(F.normalize(vectors, dim=-1) @ items_t)  # (B, K, C)
            scores = (weights[..., None] * cosines).sum(1) / query.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            scores = scores / TEMPERATURE
        if self.typicality is not None:
            if typicality is None:
                raise ValueError("the typicality bias needs the items' and the history's typicality features")
            scores = scores + self.typicality(*typicality, weights)
        return scores

    def centre(self, table: DomainTable) -> torch.Tensor:
        return self.transform(table.unit).mean(0)


def whitened_prior(table: DomainTable, power: float) -> FrameInvariantHead:
    """The prior on whitened vectors, with no training: each axis of the domain's aligned frame (its principal axes)
    scaled by its standard deviation to the power ``-power`` (1: every axis the same variance), for query and items.
    A domain's own variances set the scales, so it needs no other domain."""
    head = Part(axis_weights=True).head(table.vectors.shape[1])
    variances = table.vectors.var(0)
    with torch.no_grad():
        head.log_axis.copy_(-power / 2 * variances.clamp(min=variances.max() * 1e-6).log())
    return head


class ScoreSum(nn.Module):
    """The sum of several heads' scores, each with its own centre."""

    typicality = None

    def __init__(self, heads: list[FrameInvariantHead]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def centre(self, table: DomainTable) -> torch.Tensor:
        return torch.stack([head.centre(table) for head in self.heads])  # (heads, D)

    def scores(
        self, vectors: torch.Tensor, items: torch.Tensor, centre: torch.Tensor, typicality=None
    ) -> torch.Tensor:
        return sum(head.scores(vectors, items, own) for head, own in zip(self.heads, centre))


class TopReranked(nn.Module):
    """The prior's ranking with its top ``top`` catalogue items (history included) reordered by another head.

    An item inside the prior's top keeps the other head's score plus an offset above any prior score; one outside
    keeps the prior's. So a target and a random item outside the top compare as under the prior (which AUC counts),
    while the order at the top, which NDCG@10 counts, is the other head's."""

    typicality, OFFSET = None, 1e4  # scores are cosines over the temperature, far below the offset

    def __init__(self, reranker: FrameInvariantHead, table: DomainTable, top: int) -> None:
        super().__init__()
        if reranker.typicality is not None:
            raise ValueError("TopReranked re-ranks by cosines only; a part with a typicality bias cannot re-rank")
        self.prior, self.reranker, self.table, self.top = Part().head(table.unit.shape[1]), reranker, table, top

    def centre(self, table: DomainTable) -> torch.Tensor:
        return torch.stack([self.prior.centre(table), self.reranker.centre(table)])  # (2, D)

    def scores(
        self, vectors: torch.Tensor, items: torch.Tensor, centre: torch.Tensor, typicality=None
    ) -> torch.Tensor:
        catalogue = self.prior.scores(vectors, self.table.unit, centre[0])  # (B, C)
        threshold = catalogue.topk(min(self.top, catalogue.shape[1]), dim=-1).values[:, -1:]  # (B, 1)
        prior = catalogue if items is self.table.unit else self.prior.scores(vectors, items, centre[0])
        # A slack far above rounding: the top's last item is inside whether scored with the catalogue or alone.
        return torch.where(
            prior >= threshold - 1e-4, self.OFFSET + self.reranker.scores(vectors, items, centre[1]), prior
        )


def training_pairs(corpus, domain: str) -> list[tuple[list[str], str]]:
    """(history, next item) at every position of the domain's training sequences."""
    rows = corpus["train"].filter(lambda d: d == domain, input_columns="domain")["items"]
    return [(items[max(0, t - HISTORY_ITEMS) : t], items[t]) for items in rows for t in range(1, len(items))]


class Part(NamedTuple):
    """One learned part of the screen and how it is trained."""

    history_weights: bool = False
    axis_weights: bool = False
    pair_kernel: bool = False
    domains_alike: bool = False  # every training domain drawn equally often, not by the square root of its size
    hard_negatives: bool = False  # half the negatives are the prior's top-ranked items, not uniformly drawn ones
    catalogue_softmax: bool = False  # uniform negatives weighted to stand for the whole catalogue (``sampled_loss``)
    shared_adapter: bool = False  # a linear map of the shared frame (needs tables with ``shared_frame``)
    candidate_typicality: bool = False  # a learned bias of the candidate's typicality features
    worst_domain: bool = False  # every step on every domain, weighted by its running excess over the prior's loss
    full_softmax: bool = False  # the exact softmax over the whole catalogue, the history's other items masked
    top_pairs: bool = False  # with full_softmax: only pairs whose next item the prior ranks in its top TOP_PAIRS
    sampled_too: bool = False  # with full_softmax: plus the plain sampled loss, so the bulk of the list counts too

    def head(self, dim: int) -> FrameInvariantHead:
        """The part's head for item vectors of size ``dim``, the prior exactly until trained."""
        return FrameInvariantHead(
            self.history_weights,
            self.axis_weights,
            dim,
            self.pair_kernel,
            self.shared_adapter,
            self.candidate_typicality,
        )


NEGATIVES, HARD_NEGATIVES = 128, 64  # negatives per training pair; of them, the prior's top items with hard_negatives
TOP_PAIRS = 100  # with top_pairs, a pair counts only where the prior ranks its next item within its top this many


@torch.no_grad()
def hard_negatives(table: DomainTable, batch: list[tuple[list[str], str]], count: int) -> torch.Tensor:
    """(B, count) rows of the items the prior ranks highest for each history, its own items and the next one excluded:
    the near neighbours that compete for the top ten, which uniformly drawn negatives almost never are. (A domain of
    fewer than ``count`` other items fills up with excluded ones; the loss masks the next item wherever it is.)"""
    prior = Part().head(table.unit.shape[1])
    scores = prior.scores(table.history_vectors([history for history, _ in batch]), table.unit, prior.centre(table))
    for row, (history, target) in enumerate(batch):
        scores[row, [table.row[key] for key in {*history, target}]] = float("-inf")
    return scores.topk(min(count, len(table.keys)), dim=-1).indices


def sampled_loss(scores: torch.Tensor, catalogue_size: int | None = None) -> torch.Tensor:
    """Cross-entropy of the next item, scores (B, 1 + M): the next item's first, then M negatives drawn uniformly with
    replacement (-inf where one is the next item).

    Without ``catalogue_size`` it is a softmax over those 1 + M items, which a ranker wins by separating the next item
    from random ones. With it, each negative stands for ``catalogue_size / M`` items (its logit gets
    ``log(catalogue_size / M)``, the log-sampling-probability correction), so the loss estimates the softmax over the
    whole catalogue, whose denominator the near neighbours at the top of the list dominate."""
    if catalogue_size is not None:
        negatives = scores.shape[1] - 1
        scores = scores + F.pad(torch.full_like(scores[:, 1:], math.log(catalogue_size / negatives)), (1, 0))
    return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long))


def batch_losses(
    heads: list[FrameInvariantHead],
    table: DomainTable,
    batch: list[tuple[list[str], str]],
    part: Part,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """The loss of each head on one batch of one domain's (history, next item) pairs, with the same negatives.

    With ``full_softmax`` there are no sampled negatives: the loss is the cross-entropy of the next item over the
    whole catalogue, the history's other items masked, which is the ranking the metrics measure (full ranking,
    history excluded), so it is decided at the top of the list, among the next item's near neighbours."""
    histories = [history for history, _ in batch]
    vectors = table.history_vectors(histories)
    targets = torch.tensor([table.row[target] for _, target in batch])
    with_typicality = any(head.typicality is not None for head in heads)
    if part.full_softmax:
        candidates = table.unit
        masked = table.history_mask(histories)
        masked[torch.arange(len(batch)), targets] = False  # a repeated next item stays in the softmax
        typicality = (table.typicality, table.history_typicality(histories)) if with_typicality else None
        if part.sampled_too:  # the plain loss's candidates, read off the catalogue's scores
            negatives = torch.randint(len(table.keys), (len(batch), NEGATIVES), generator=generator)
            rows = torch.cat([targets[:, None], negatives], 1)  # (B, 1 + NEGATIVES)
            drawn_again = F.pad(negatives == targets[:, None], (1, 0), value=False)
    else:
        uniform = NEGATIVES - HARD_NEGATIVES if part.hard_negatives else NEGATIVES
        negatives = torch.randint(len(table.keys), (len(batch), uniform), generator=generator)
        if part.hard_negatives:
            negatives = torch.cat([hard_negatives(table, batch, HARD_NEGATIVES), negatives], 1)
        rows = torch.cat([targets[:, None], negatives], 1)  # (B, 1 + NEGATIVES)
        candidates = table.unit[rows]
        masked = F.pad(negatives == targets[:, None], (1, 0), value=False)
        typicality = (table.typicality[rows], table.history_typicality(histories)) if with_typicality else None
    counted = torch.ones(len(batch))
    if part.top_pairs:  # NDCG@10 can only change where the next item is near the top already
        with torch.no_grad():
            prior = Part().head(table.unit.shape[1])
            by_prior = prior.scores(vectors, candidates, prior.centre(table)).masked_fill(masked, float("-inf"))
        counted = ((by_prior > by_prior.gather(1, targets[:, None])).sum(1) < TOP_PAIRS).float()
    losses = []
    for head in heads:
        # Centred as in ranking: a nonlinear pair kernel sees the cosines it will see there.
        scores = head.scores(vectors, candidates, head.centre(table), typicality).masked_fill(masked, float("-inf"))
        if part.full_softmax:
            per_pair = F.cross_entropy(scores, targets, reduction="none")
            loss = (per_pair * counted).sum() / counted.sum().clamp(min=1)
            if part.sampled_too:
                loss = loss + sampled_loss(scores.gather(1, rows).masked_fill(drawn_again, float("-inf")))
            losses.append(loss)
        else:
            losses.append(sampled_loss(scores, len(table.keys) if part.catalogue_softmax else None))
    return losses


class WorstDomainWeights:
    """Online weights of the training domains for a group-robust loss (group DRO, Sagawa et al. 2020), on the part's
    loss above the prior's: after each step ``log q_d += step_size * (loss_d - prior_loss_d)``, and the loss is
    ``sum_d q_d (loss_d - prior_loss_d)`` with ``q = softmax(log q)``. A domain the part keeps serving worse than the
    prior gains weight step after step, so the part is pushed to what helps every training domain, the held-out rule's
    worst fold. (The weights follow the running sum of each domain's excess, not one noisy batch.)"""

    def __init__(self, domains: int, step_size: float = 1.0) -> None:
        self.log_weights, self.step_size = torch.zeros(domains), step_size

    def loss(self, losses: torch.Tensor, prior_losses: torch.Tensor) -> torch.Tensor:
        """(domains,) losses of the part and of the prior on the same batches -> the weighted excess (a scalar)."""
        excess = losses - prior_losses.detach()
        self.log_weights += self.step_size * excess.detach()
        return (torch.softmax(self.log_weights, 0) * excess).sum()


def train(
    head: FrameInvariantHead,
    tables: dict,
    pairs: dict,
    steps: int,
    seed: int,
    part: Part,
    every: int = 0,
    at_step: Callable[[int], None] | None = None,
) -> None:
    """Train ``head`` for ``steps`` batches of 256 pairs, one domain per batch (with ``worst_domain``: 256 pairs
    split evenly over the domains, for ``WorstDomainWeights``); ``at_step(step)`` after every ``every`` steps before
    the last (the learning curve a single run can give)."""
    if not list(head.parameters()):
        return
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    domains = sorted(pairs)
    sizes = torch.tensor([len(pairs[d]) for d in domains], dtype=torch.float).sqrt()  # flatter than by size
    if part.domains_alike:
        sizes = torch.ones(len(domains))
    if part.worst_domain:  # the prior scores the same batches: the loss is the part's excess over it
        prior, per_domain = Part().head(tables[domains[0]].unit.shape[1]), 256 // len(domains)
        worst_domain = WorstDomainWeights(len(domains))
    for step in range(1, steps + 1):
        if part.worst_domain:
            losses = [
                batch_losses(
                    [head, prior], tables[d], rng.sample(pairs[d], min(per_domain, len(pairs[d]))), part, generator
                )
                for d in domains
            ]
            loss = worst_domain.loss(*(torch.stack(column) for column in zip(*losses)))
        else:
            domain = domains[int(torch.multinomial(sizes, 1, generator=generator))]
            batch = rng.sample(pairs[domain], min(256, len(pairs[domain])))
            (loss,) = batch_losses([head], tables[domain], batch, part, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if every and step % every == 0 and step < steps:
            at_step(step)


@torch.no_grad()
def measure(head: FrameInvariantHead | ScoreSum | TopReranked, table: DomainTable, data) -> dict[str, float]:
    """Full ranking (history excluded) and candidate scoring on one domain's evaluation users."""
    centre, ranked, scored = head.centre(table), [], []
    for start in range(0, len(data.histories), 64):
        histories = data.histories[start : start + 64]
        vectors = table.history_vectors(histories)
        rows = torch.tensor([[table.row[k] for k in row] for row in data.candidates[start : start + 64]])
        catalogue = candidates = None
        if head.typicality is not None:
            history_features = table.history_typicality(histories)
            catalogue = (table.typicality, history_features)
            candidates = (table.typicality[rows], history_features)
        scores = head.scores(vectors, table.unit, centre, catalogue).masked_fill(
            table.history_mask(histories), float("-inf")
        )
        ranked += [[table.keys[i] for i in row] for row in scores.topk(10, dim=-1).indices.tolist()]
        scored += head.scores(vectors, table.unit[rows], centre, candidates).tolist()
    labels = [[1] + [0] * (len(row) - 1) for row in data.candidates]
    return {**ranking_means(ranked, data.targets, (10,)), **candidate_metrics(scored, labels)}


PARTS = {
    "history weights": Part(history_weights=True),
    "axis weights": Part(axis_weights=True),
    "both": Part(history_weights=True, axis_weights=True),
    "pair kernel": Part(pair_kernel=True),
    "pair kernel, domains alike": Part(pair_kernel=True, domains_alike=True),
    "pair kernel, hard negatives": Part(pair_kernel=True, hard_negatives=True),
    "history weights, hard negatives": Part(history_weights=True, hard_negatives=True),
    "pair kernel, catalogue softmax": Part(pair_kernel=True, catalogue_softmax=True),
    "history weights, catalogue softmax": Part(history_weights=True, catalogue_softmax=True),
    "shared adapter": Part(shared_adapter=True),
    "shared adapter, catalogue softmax": Part(shared_adapter=True, catalogue_softmax=True),
    "candidate typicality": Part(candidate_typicality=True),
    "pair kernel, worst domain": Part(pair_kernel=True, worst_domain=True),
    "history weights, worst domain": Part(history_weights=True, worst_domain=True),
    "history weights, worst domain, catalogue softmax": Part(
        history_weights=True, worst_domain=True, catalogue_softmax=True
    ),
    "history weights, full softmax": Part(history_weights=True, full_softmax=True),
    "pair kernel, full softmax": Part(pair_kernel=True, full_softmax=True),
    "shared adapter, full softmax": Part(shared_adapter=True, full_softmax=True),
    "axis weights, full softmax": Part(axis_weights=True, full_softmax=True),
    "axis weights, full and sampled softmax": Part(axis_weights=True, full_softmax=True, sampled_too=True),
    "history weights, full softmax, top pairs": Part(history_weights=True, full_softmax=True, top_pairs=True),
    "pair kernel, full softmax, top pairs": Part(pair_kernel=True, full_softmax=True, top_pairs=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_dir", required=True)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument(
        "--pretraining_domains",
        nargs="+",
        default=["amazon14_beauty", "yelp_p5", "amazon18_scientific", "microlens_50k", "xwines", "foursquare_nyc"],
    )
    parser.add_argument(
        "--held_out",
        nargs="+",
        default=["amazon18_scientific", "xwines", "amazon14_beauty", "yelp_p5"],
        help="each is held out in turn (a fold)",
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--measure_every", type=int, default=0, help="also measure each part after every this many steps (0: never)"
    )
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--users", type=int, default=2000, help="validation users per held-out domain")
    parser.add_argument("--negatives", type=int, default=20, help="sampled negatives per user for AUC and GAUC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train_on_held_out",
        action="store_true",
        help="diagnostic: train on the held-out domain's own training split instead (can the part help at all?)",
    )
    parser.add_argument(
        "--whitening_powers",
        nargs="*",
        type=float,
        default=[],
        help="diagnostic: also measure the whitened prior (``whitened_prior``) with each power, alone and summed with "
        "the prior (no training)",
    )
    parser.add_argument(
        "--rerank_top",
        type=int,
        default=0,
        help="also measure each trained part and whitened prior re-ranking only the prior's top this many items "
        "(``TopReranked``; 0: not)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="path of the results, without suffix")
    args = parser.parse_args()
    if args.rerank_top and any(PARTS[name].candidate_typicality for name in args.parts):
        parser.error("--rerank_top re-ranks by cosines only: leave out the typicality parts")  # before any training
    torch.manual_seed(args.seed)
    tokenizer = RecBaseTokenizer.from_pretrained(args.tokenizer_dir)
    corpus = load_corpus(args.corpus_dir)
    tables = {domain: DomainTable(tokenizer, domain) for domain in args.pretraining_domains}
    if any(PARTS[name].shared_adapter for name in args.parts):
        shared_tables = {
            domain: DomainTable(tokenizer, domain, shared_frame=True) for domain in args.pretraining_domains
        }
    pairs = {domain: training_pairs(corpus, domain) for domain in args.pretraining_domains}
    results = {"settings": {**vars(args), "results": str(args.results)}, "folds": {}}
    for held_out in args.held_out:
        data = build_evaluation_set(
            corpus, held_out, tables[held_out].keys, "validation", args.users, args.negatives, args.seed
        )
        dim = tables[held_out].unit.shape[1]
        fold = {"prior": measure(Part().head(dim), tables[held_out], data)}
        for power in args.whitening_powers:
            whitened = whitened_prior(tables[held_out], power)
            fold[f"whitened prior, power {power:g}"] = measure(whitened, tables[held_out], data)
            summed = ScoreSum([Part().head(dim), whitened])
            fold[f"prior + whitened prior, power {power:g}"] = measure(summed, tables[held_out], data)
            if args.rerank_top:
                reranked = TopReranked(whitened, tables[held_out], args.rerank_top)
                name = f"prior, top {args.rerank_top} re-ranked by the whitened prior, power {power:g}"
                fold[name] = measure(reranked, tables[held_out], data)
        for name in args.parts:
            part, started = PARTS[name], time.perf_counter()
            head = part.head(dim)
            others = {d: p for d, p in pairs.items() if (d == held_out) == args.train_on_held_out}
            part_tables, by_step = shared_tables if part.shared_adapter else tables, {}

            def at_step(step: int) -> None:
                by_step[step] = measure(head, part_tables[held_out], data)
                print(held_out, name, "step", step, {k: round(v, 4) for k, v in by_step[step].items()}, flush=True)

            train(head, part_tables, others, args.steps, args.seed, part, args.measure_every, at_step)
            fold[name] = {**measure(head, part_tables[held_out], data), "train_seconds": time.perf_counter() - started}
            if by_step:
                fold[name]["by_step"] = by_step
            if args.rerank_top:
                reranked = TopReranked(head, part_tables[held_out], args.rerank_top)
                fold[f"prior, top {args.rerank_top} re-ranked by {name}"] = measure(
                    reranked, part_tables[held_out], data
                )
            if head.log_axis is not None:  # what it learned: each principal axis's weight, the largest first
                fold[name]["axis_weights"] = torch.exp(head.log_axis.detach()).tolist()
            if head.pair_kernel is not None:  # what it learned: phi_k at a few cosines, for the newest three items
                with torch.no_grad():
                    learned = head.pair_kernel(KERNEL_KNOTS.expand(1, HISTORY_ITEMS, -1))[0, :3]
                fold[name]["kernel"] = {"cosines": KERNEL_KNOTS.tolist(), "phi_newest_three": learned.tolist()}
            print(
                held_out,
                name,
                {k: round(v, 4) for k, v in fold[name].items() if k not in ("kernel", "by_step", "axis_weights")},
                "prior",
                {k: round(v, 4) for k, v in fold["prior"].items()},
                flush=True,
            )
        results["folds"][held_out] = fold
        # After each fold: a long run keeps what it did.
        write_json_atomically(args.results.with_suffix(".json"), results)
        write_text_atomically(args.results.with_suffix(".md"), markdown(results) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    metrics = ("ndcg@10", "recall@10", "auc", "gauc")
    folds = results["folds"]
    parts = [name for name in next(iter(folds.values())) if name != "prior" and all(name in f for f in folds.values())]
    lines = [
        "| held-out domain | part | " + " | ".join(f"{m} (gain over the prior)" for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for domain, fold in results["folds"].items():
        prior = fold["prior"]
        lines.append(f"| {domain} | prior (no training) | " + " | ".join(f"{prior[m]:.4f}" for m in metrics) + " |")
        for name in parts:
            row = fold[name]
            lines.append(
                f"| {domain} | {name} | "
                + " | ".join(f"{row[m]:.4f} ({row[m] - prior[m]:+.4f})" for m in metrics)
                + " |"
            )
    worst = {
        name: {m: min(f[name][m] - f["prior"][m] for f in results["folds"].values()) for m in metrics}
        for name in parts
    }
    lines += [
        "",
        "Worst fold's gain over the prior:",
        "",
        "| part | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    lines += [f"| {name} | " + " | ".join(f"{worst[name][m]:+.4f}" for m in metrics) + " |" for name in parts]
    for name in parts:
        # Steps are ints when measured, strings when read back from the JSON file.
        steps = sorted({step for fold in folds.values() for step in fold[name].get("by_step", {})}, key=int)
        if not steps:
            continue
        lines += ["", f"{name}: NDCG@10 / AUC gain over the prior along training (each fold, then the worst)", ""]
        lines += ["| step | " + " | ".join(folds) + " | worst |", "|---|" + "---|" * (len(folds) + 1)]
        stages = [(str(step), [fold[name]["by_step"][step] for fold in folds.values()]) for step in steps]
        for label, rows in [*stages, ("end", [fold[name] for fold in folds.values()])]:
            gains = [
                (row["ndcg@10"] - f["prior"]["ndcg@10"], row["auc"] - f["prior"]["auc"])
                for row, f in zip(rows, folds.values())
            ]
            worst_gain = f"{min(n for n, _ in gains):+.4f} / {min(a for _, a in gains):+.3f}"
            lines.append(f"| {label} | " + " | ".join(f"{n:+.4f} / {a:+.3f}" for n, a in gains) + f" | {worst_gain} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
