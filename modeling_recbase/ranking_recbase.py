"""How a RecBase model ranks items: the ``RankingPolicy`` saved beside the weights, and ``ItemRanker``, the one
component that ranks and scores with it (the pipeline, evaluation, validation and adaptation all rank through it).

The policy is to ranking what ``GenerationConfig`` is to decoding: the model's config describes the network, the
policy which heads score which domains and with what weights, how much of a history is read, and how large the
shortlist is. ``model.save_pretrained`` writes it as ``ranking_config.json``; ``from_pretrained`` reads it back
(a folder without one gets the policy its config implies).

Shipped beside the weights: imports only torch, transformers, the standard library and same-folder files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import cached_file

from .generation_recbase import CACHE_FIELD, constrained_beam_search
from .vocabulary_recbase import item_domain

RANKING_CONFIG_NAME = "ranking_config.json"
SCORING_ROWS = 1024  # (user, candidate) rows scored at once by the code head: bounds score's memory
COUNT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the weights of log(1 + count) that fit_count_weight tries
# A re-ranked item scores this many temperatures above its re-rank score: above any centred cosine (at most 2) over
# the temperature, so the re-ranked top stays above every item outside it.
RERANK_OFFSET_TEMPERATURES = 4.0
RERANK_SLACK = 1e-4  # far above rounding: the top's last item is inside whether scored with the catalogue or alone
# Ranking fields that an older release kept in config.json, and their names here.
OLD_CONFIG_FIELDS = {
    "code_score_weight": "code_score_weight",
    "code_score_domains": "code_score_domains",
    "calibrated_code_score": "calibrated_code_score",
    "rerank_candidates": "shortlist_size",
}


@dataclass
class RankingPolicy:
    """Which heads score items, where, and with what weights.

    Args:
        residual_domains: the domains where the dense head's learned residual counts (``None``: all). Elsewhere the
            dense head ranks by its prior alone (the recency-weighted cosine to the history's content vectors), so a
            domain the model never saw is never ranked below that training-free prior.
        code_score_weight: weight of the code head's log-likelihood in an item's score (0: the dense head alone).
        code_score_domains: with a dense head, the domains whose items get the code head's score (``None``: all).
            Items of other domains are scored by the dense head alone: on a domain the model never saw, the
            code head's log-likelihood pulls the ranking towards noise. A model without a dense head is scored
            by its code head on every domain.
        calibrated_code_score: score the code head by pointwise mutual information: the log-likelihood after the
            history minus the log-likelihood after an empty history.
        popularity_bias: use catalogue counts where items have them: add ``count_weights[domain]`` x
            log(1 + count) to the dense score of an item of a domain in ``count_weights``, else the learned
            popularity bias (False: counts are ignored).
        count_weights: domain -> the weight of log(1 + catalogue count) in its items' dense scores, in place of the
            learned popularity bias there (``ItemRanker.fit_count_weight`` chooses it on the domain's own log).
        shortlist_size: items the dense head shortlists, next to the beam's, for scoring by both heads.
        num_beams: beams of the constrained beam search that proposes the code head's candidates.
        exclude_history: never recommend an item of the history (a call may override it).
        max_history_items: the most recent history items read (``None``: the model config's).
        whitened_rerank_top: on a domain that the dense head's prior alone ranks (no residual, code score or
            count weight above 0 there; ``reranks``), the best ``whitened_rerank_top`` items of the catalogue by
            the dense score (the prior's cosine, plus the learned popularity bias of items with counts; history
            included) are put in the order of the *whitened* prior, the same cosine with every
            principal axis of the domain scaled by its variance to the power ``-whitening_power / 2``, for the query
            and the items (``tokenizer.whitened_unit_item_vectors``); every other item keeps its dense score,
            below them. So the order at the top is the whitened prior's, and an item outside the top compares as
            before. Nothing is trained (0: no re-rank).
        whitening_power: 1 gives every axis the same variance; 0 is the plain prior.
    """

    residual_domains: list[str] | None = None
    code_score_weight: float = 0.0
    code_score_domains: list[str] | None = None
    calibrated_code_score: bool = False
    popularity_bias: bool = True
    count_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    shortlist_size: int = 100
    num_beams: int = 20
    exclude_history: bool = True
    max_history_items: int | None = None
    whitened_rerank_top: int = 0
    whitening_power: float = 0.5

    def __post_init__(self) -> None:
        if self.code_score_domains is not None:
            self.code_score_domains = sorted(self.code_score_domains)
        if self.residual_domains is not None:
            self.residual_domains = sorted(self.residual_domains)
        self.count_weights = {domain: float(weight) for domain, weight in sorted(self.count_weights.items())}
        if self.code_score_weight < 0 or self.shortlist_size < 0 or self.num_beams < 1:
            raise ValueError(
                f"a ranking policy needs code_score_weight >= 0, shortlist_size >= 0, num_beams >= 1: {self}"
            )
        negative = {domain: weight for domain, weight in self.count_weights.items() if not weight >= 0}
        if negative:
            raise ValueError(f"count weights must be >= 0, got {negative}")
        if self.max_history_items is not None and self.max_history_items < 1:
            raise ValueError(f"max_history_items must be at least 1 or None, got {self.max_history_items}")
        if self.whitened_rerank_top < 0 or not self.whitening_power >= 0:
            raise ValueError(
                f"a ranking policy needs whitened_rerank_top >= 0 and whitening_power >= 0, got "
                f"{self.whitened_rerank_top} and {self.whitening_power}"
            )

    def code_weights(self, keys: Sequence[str], dense_head: bool) -> list[float]:
        """The code head's weight in the score of each item key."""
        if not dense_head or self.code_score_domains is None or self.code_score_weight == 0:
            return [self.code_score_weight] * len(keys)
        domains = set(self.code_score_domains)
        return [self.code_score_weight if item_domain(key) in domains else 0.0 for key in keys]

    def residual_weights(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys),): 1 where the dense head's residual counts for the domain of ``keys[i]``, else 0."""
        if self.residual_domains is None:
            return torch.ones(len(keys))
        domains = set(self.residual_domains)
        return torch.tensor([float(item_domain(key) in domains) for key in keys])

    def reranks(self, domain: str) -> bool:
        """Whether ``domain``'s top items are re-ordered by the whitened prior: where the prior alone ranks it."""
        residual = self.residual_domains is None or domain in self.residual_domains
        code = self.code_score_weight > 0 and (self.code_score_domains is None or domain in self.code_score_domains)
        counted = self.popularity_bias and self.count_weights.get(domain, 0.0) > 0  # a weight of 0 counts nothing
        return self.whitened_rerank_top > 0 and not (residual or code or counted)

    def prior_only(self) -> RankingPolicy:
        """This policy with nothing learned in the ranking: the dense head's training-free prior alone (re-ranked as
        this policy re-ranks a domain the prior ranks)."""
        return dataclasses.replace(self, residual_domains=[], code_score_weight=0.0, popularity_bias=False)

    def check(self, config) -> None:
        """Raise a ValueError unless this policy can rank with a model of ``config``."""
        if not config.dense_head and self.code_score_weight == 0:
            raise ValueError("this model has no dense head, so its ranking policy needs code_score_weight > 0")

    @classmethod
    def from_model_config(cls, config) -> RankingPolicy:
        """The policy a config implies: the ranking fields of an older release's config where it has them, a
        model without a dense head ranked by its code head, the defaults otherwise."""
        values = {new: getattr(config, old) for old, new in OLD_CONFIG_FIELDS.items() if hasattr(config, old)}
        if not config.dense_head:
            values.setdefault("code_score_weight", 1.0)
        return cls(**values)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, RANKING_CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(dataclasses.asdict(self), handle, indent=2, sort_keys=True)
            handle.write("\n")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, config, **hub_kwargs) -> RankingPolicy:
        """The policy saved in a folder (or Hub repository), else the one ``config`` implies."""
        path = cached_file(
            name_or_path,
            RANKING_CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
        if path is None:
            return cls.from_model_config(config)
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**values)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a RecBase ranking policy ({error})") from error


def one_standard_error_choice(weights: Sequence[float], gains: torch.Tensor) -> float:
    """The smallest of ``weights`` whose mean gain is within one standard error of the best's (the one-standard-
    error rule of model selection): a difference the sampled users cannot tell apart does not move the weight
    away from the smaller, simpler one. ``gains``: (weights, users) each user's gain (NDCG@10) under each weight;
    the standard error is that of the paired per-user difference from the best weight."""
    means = gains.mean(-1)  # (weights,)
    differences = gains[means.argmax()] - gains  # (weights, users)
    standard_errors = (differences.var(-1, correction=0) / gains.shape[-1]).sqrt()  # (weights,)
    return min(float(weight) for weight, close in zip(weights, means >= means.max() - standard_errors) if close)


class ItemRanker:
    """Ranks and scores items for histories with a model, its tokenizer and a ``RankingPolicy``.

    With a dense head, every allowed item is scored by the cosine between the predicted next-item content vector
    and its own (plus, given catalogue counts, its domain's count weight x log(1 + count), or its learned popularity
    bias where the policy has no count weight for the domain). Where the policy gives the code head weight, the
    beam's items (constrained beam search) and the dense head's best ``shortlist_size`` are scored by both heads
    (``score``). Without a dense head, the constrained beam search ranks. A user's dense query holds the learned
    residual where the policy's ``residual_domains`` holds the domain ranked (of ``item_keys``, or of the user's
    first candidate). Where the prior alone ranks a domain, the policy's ``whitened_rerank_top`` best items are put in
    the whitened prior's order, above the rest.

    Example:
        >>> ranker = ItemRanker(model, tokenizer)  # the model's own policy
        >>> ranker.rank([["ml-100k/50", "ml-100k/172"]], tokenizer.domain_items("ml-100k"), top_k=10)
    """

    def __init__(self, model, tokenizer, policy: RankingPolicy | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.policy = policy if policy is not None else model.ranking_policy
        self.policy.check(model.config)

    @property
    def max_history_items(self) -> int:
        """Items of a history the model reads: the policy's (else what it was trained to read), at most what its
        context holds with room for one more item."""
        config = self.model.config
        wanted = self.policy.max_history_items or config.max_history_items
        return min(wanted, (config.max_position_embeddings - 1) // config.tokens_per_item - 1)

    @torch.no_grad()
    def rank(
        self,
        histories: Sequence[Sequence[str]],
        item_keys: Sequence[str],
        top_k: int,
        exclude_history: bool | None = None,
    ) -> list[list[tuple[str, float]]]:
        """For each history, up to ``top_k`` distinct items of ``item_keys``, best first, with their scores; with
        ``exclude_history`` (default: the policy's), never an item of that history."""
        model, tokenizer, policy = self.model, self.tokenizer, self.policy
        exclude_history = policy.exclude_history if exclude_history is None else exclude_history
        num_beams = max(policy.num_beams, top_k)
        if not model.config.dense_head:
            ranked = constrained_beam_search(
                model, tokenizer, histories, item_keys, num_beams, self.max_history_items, exclude_history
            )
            return [row[:top_k] for row in ranked]
        queries = self._dense_queries(histories, item_keys[0])  # (users, item_vector_size)
        dense = self._item_scores(queries, item_keys)  # (users, items)
        if policy.reranks(item_domain(item_keys[0])):
            top = dense.topk(min(policy.whitened_rerank_top, len(item_keys)), dim=-1).values[:, -1:]  # (users, 1)
            dense = self._whitened_top(queries, dense, item_keys, top)
        positions = tokenizer.positions(item_keys)
        if exclude_history:
            for row, history in enumerate(histories):
                dense[row, [positions[key] for key in set(history) if key in positions]] = float("-inf")
        if not any(policy.code_weights(item_keys, dense_head=True)):
            top = dense.topk(min(num_beams, len(item_keys)), dim=-1)
            return [
                [(item_keys[i], score) for i, score in zip(rows, values) if score != float("-inf")][:top_k]
                for rows, values in zip(top.indices.tolist(), top.values.tolist())
            ]
        # Score a shortlist per user by both heads: the beam's items (the code head's best), then the dense head's
        # best. Excluded items are -inf in ``dense`` (so last in its order); every shortlist has the same length,
        # as ``score`` needs.
        shortlist_size = min(policy.shortlist_size + num_beams, int((dense > float("-inf")).sum(-1).min()))
        beams = constrained_beam_search(model, tokenizer, histories, item_keys, num_beams, self.max_history_items)
        order = dense.argsort(dim=-1, descending=True)[:, :shortlist_size].tolist()
        shortlists = []
        for row, (beam, best) in enumerate(zip(beams, order)):
            chosen = dict.fromkeys(key for key, _ in beam if dense[row, positions[key]] > float("-inf"))
            for position in best:
                if len(chosen) >= shortlist_size:
                    break
                chosen.setdefault(item_keys[position])
            shortlists.append(list(chosen)[:shortlist_size])
        scores = self.score(histories, shortlists)
        return [sorted(zip(keys, row), key=lambda pair: -pair[1])[:top_k] for keys, row in zip(shortlists, scores)]

    @torch.no_grad()
    def dense_scores(self, histories: Sequence[Sequence[str]], item_keys: Sequence[str]) -> torch.Tensor:
        """(users, items): the dense head's score of every item of ``item_keys`` after each history (no re-rank)."""
        return self._item_scores(self._dense_queries(histories, item_keys[0]), item_keys)

    def _dense_queries(self, histories: Sequence[Sequence[str]], domain_key: str) -> torch.Tensor:
        """(users, item_vector_size): the dense head's query after each history, ranking the domain of
        ``domain_key`` (where the policy's residual counts, or not)."""
        encoded = self.tokenizer.encode_history(
            list(histories), max_history_items=self.max_history_items, return_tensors="pt", return_item_vectors=True
        ).to(self.model.device)
        return self.model(
            **encoded,
            use_cache=False,
            logits_to_keep=1,
            return_dense_queries=True,
            residual_weights=self._residual_weights([domain_key] * len(histories)),
        ).dense_queries[:, -1]

    def _item_scores(
        self, queries: torch.Tensor, keys: Sequence[str], per_user: bool = False, centred: bool = False
    ) -> torch.Tensor:
        """queries (users, item_vector_size) -> (users, N): the dense scores of ``keys`` (N items shared by every user,
        or with ``per_user`` each user's own N, flattened to users x N), plus what catalogue counts add; ``centred``:
        less each item's domain centre (as ``score`` scores)."""
        tokenizer, device = self.tokenizer, self.model.device
        shape = (len(queries), -1) if per_user else (len(keys),)
        vectors = tokenizer.unit_item_vectors(keys).to(device)
        centres = tokenizer.domain_centres(keys).to(device).view(*shape, vectors.shape[-1]) if centred else None
        buckets, counted = self._count_signals(keys)
        buckets = buckets.view(shape) if buckets is not None else None
        scores = self.model.dense_scores(
            queries, vectors.view(*shape, vectors.shape[-1]), buckets, centres, unit_latents=True
        )
        return scores if counted is None else scores + counted.view(shape)

    def _whitened_top(
        self,
        queries: torch.Tensor,
        scores: torch.Tensor,
        keys: Sequence[str],
        top: torch.Tensor,
        per_user: bool = False,
    ) -> torch.Tensor:
        """``scores`` (users, N) of ``keys`` (laid out as for ``_item_scores``) with each score at or above the user's
        ``top`` (users, 1), the last score of the prior's top ``whitened_rerank_top``, replaced by the item's whitened
        prior score + ``RERANK_OFFSET_TEMPERATURES`` / temperature. queries (users, item_vector_size): the prior's,
        of users of one domain. Only the items inside the top are scored again (about users x top rows)."""
        tokenizer, device, power = self.tokenizer, self.model.device, self.policy.whitening_power
        rows, columns = (scores >= top - RERANK_SLACK).nonzero(as_tuple=True)  # (M,) each
        at = rows * scores.shape[1] + columns if per_user else columns  # (M,) rows of ``keys``
        whitened = self.model.dense_scores(
            queries[rows] * tokenizer.domain_whitening_scales(keys[:1], power).to(device),  # (M, D)
            tokenizer.whitened_unit_item_vectors(keys, power).to(device)[at, None],  # (M, 1, D)
            centres=tokenizer.whitened_domain_centres(keys[:1], power).to(device),  # (1, D): the users' domain's
            unit_latents=True,
        )[:, 0]
        offset = RERANK_OFFSET_TEMPERATURES / self.model.config.dense_temperature
        return scores.index_put((rows, columns), offset + whitened)

    @torch.no_grad()
    def fit_count_weight(
        self,
        sequences: Sequence[Sequence[str]],
        weights: Sequence[float] = COUNT_WEIGHTS,
        max_users: int = 1000,
        seed: int = 0,
        batch_size: int = 64,
    ) -> dict[float, float]:
        """Give one domain's items their catalogue counts from that domain's log (``tokenizer.set_item_counts``;
        an item the log never names counts 0), choose the weight of log(1 + count) on the same log and set it in
        this ranker's policy (``count_weights``); returns the NDCG@10 of each weight tried. Nothing is trained.

        ``sequences``: each user's interactions with the domain's items in order. Leave-last-out, the log split
        once more the way it was split from the test: each of up to ``max_users`` users (sampled with ``seed``)
        with two items or more has the last one ranked among the domain's items after the others (which are
        excluded from the ranking when the policy excludes the history), by the dense score plus weight x
        log(1 + count), the count taken over the log less every user's last interaction, as the counts given at
        test time hold no test interaction (items tied with the target count half). The weight is chosen by
        ``one_standard_error_choice`` on the users' NDCG@10."""
        domains = {item_domain(key) for sequence in sequences for key in sequence}
        if len(domains) != 1:
            raise ValueError(f"fit_count_weight takes the log of one domain, got items of {sorted(domains)}")
        (domain,) = domains
        items = self.tokenizer.domain_items(domain)
        positions = self.tokenizer.positions(items)
        unknown = next((key for sequence in sequences for key in sequence if key not in positions), None)
        if unknown is not None:
            raise ValueError(f"item {unknown!r} of the log is not indexed; index it before fitting its count weight")

        def count(logged: list[str]) -> torch.Tensor:
            """(items,) how often each of the domain's items is in ``logged``."""
            return torch.bincount(
                torch.tensor([positions[key] for key in logged], dtype=torch.long), minlength=len(items)
            )

        whole_log = count([key for sequence in sequences for key in sequence])
        self.tokenizer.set_item_counts(dict(zip(items, whole_log.tolist())))
        # Counts without any user's last interaction: the targets below are counted as the test items are at test.
        last_items = count([sequence[-1] for sequence in sequences if sequence])
        log_counts = (whole_log - last_items).float().log1p()  # (items,)
        users = [list(sequence) for sequence in sequences if len(sequence) >= 2]
        if not users:
            raise ValueError(f"the log of {domain!r} has no user with two interactions to leave the last one out")
        if len(users) > max_users:
            users = random.Random(seed).sample(users, max_users)
        plain = ItemRanker(self.model, self.tokenizer, dataclasses.replace(self.policy, popularity_bias=False))
        gains = []  # per batch, (weights, batch) each user's NDCG@10
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            rows = torch.arange(len(batch))
            targets = torch.tensor([positions[sequence[-1]] for sequence in batch])
            scores = plain.dense_scores([sequence[:-1] for sequence in batch], items).cpu()  # (batch, items)
            if self.policy.exclude_history:
                for row, sequence in enumerate(batch):
                    scores[row, [positions[key] for key in set(sequence[:-1])]] = float("-inf")
            batch_gains = torch.zeros(len(weights), len(batch))
            for index, weight in enumerate(weights):
                total = scores + weight * log_counts  # (batch, items)
                target_scores = total[rows, targets]  # (batch,)
                # Items tied with the target (equal texts, equal counts) count half: the expected rank when ties
                # break at random, so no weight gains by breaking ties its way.
                ties = (total == target_scores[:, None]).sum(-1) - 1
                rank = (total > target_scores[:, None]).sum(-1) + ties / 2
                hit = (rank < 10) & (target_scores > float("-inf"))
                batch_gains[index] = torch.where(hit, 1 / torch.log2(rank.float() + 2), 0.0)
            gains.append(batch_gains)
        user_gains = torch.cat(gains, dim=1)  # (weights, users)
        chosen = one_standard_error_choice(weights, user_gains)
        self.policy = dataclasses.replace(self.policy, count_weights={**self.policy.count_weights, domain: chosen})
        return {float(weight): float(mean) for weight, mean in zip(weights, user_gains.mean(-1))}

    def _residual_weights(self, keys: Sequence[str]) -> torch.Tensor | None:
        """Per user (the domain of ``keys[user]``), the residual's weight; None where it counts everywhere."""
        if self.policy.residual_domains is None:
            return None
        return self.policy.residual_weights(keys).to(self.model.device)

    def _count_signals(self, keys: Sequence[str]) -> tuple[torch.LongTensor | None, torch.Tensor | None]:
        """What catalogue counts add to the dense scores of ``keys``: the learned bias's (len(keys),) buckets (0, no
        bias, for an item of a domain in ``count_weights``) and (len(keys),) ``count_weights[domain]`` x
        log(1 + count) where the policy has count weights (an item without a count counts 0)."""
        policy, device = self.policy, self.model.device
        if not policy.popularity_bias:
            return None, None
        num_buckets = self.model.config.popularity_buckets
        buckets = self.tokenizer.popularity_buckets(keys, num_buckets).to(device) if num_buckets else None
        if not policy.count_weights:
            return buckets, None
        domains = [item_domain(key) for key in keys]
        weights = torch.tensor([policy.count_weights.get(domain, 0.0) for domain in domains], device=device)
        counts = self.tokenizer.catalogue_counts(keys).to(device).clamp(min=0)
        if buckets is not None:
            fitted = torch.tensor([domain in policy.count_weights for domain in domains], device=device)
            buckets = buckets.masked_fill(fitted, 0)
        return buckets, weights * counts.float().log1p()

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """The score of each candidate after its history: (users, candidates per user).

        ``code_score_weight`` (for a domain of ``code_score_domains``) x the log-probability of the candidate's code
        tokens (minus its empty-history log-probability with ``calibrated_code_score``), plus, with a dense head,
        the cosine between the predicted and the candidate's content vector over ``dense_temperature``, less the
        mean of that cosine over the candidate's domain (a user's ranking is unchanged, users become comparable),
        plus what its catalogue count adds (as in ``rank``); where the policy re-ranks the domain, a candidate inside
        the prior's top of the domain's catalogue scores as ``rank`` puts it, above the rest. The history runs once;
        its cache is then repeated for the candidates, ``SCORING_ROWS`` (user, candidate) rows at a time."""
        model, tokenizer, config = self.model, self.tokenizer, self.model.config
        per_user = len(candidates[0])
        if any(len(row) != per_user for row in candidates):
            raise ValueError("every history needs the same number of candidates")
        flat = [key for row in candidates for key in row]
        encoded = tokenizer.encode_history(
            list(histories),
            max_history_items=self.max_history_items,
            return_tensors="pt",
            return_item_vectors=config.dense_head,
        ).to(model.device)
        candidate_ids = tokenizer.item_token_ids(flat).to(model.device)  # (users * per_user, T)
        weights = torch.tensor(self.policy.code_weights(flat, config.dense_head), device=model.device)
        code_head = bool(weights.any())
        residual_weights = self._residual_weights([row[0] for row in candidates]) if config.dense_head else None
        prefix = model(
            **encoded,
            use_cache=code_head,
            return_dense_queries=config.dense_head,
            residual_weights=residual_weights,
        )
        users = len(histories)
        scores = torch.zeros(users, per_user, device=model.device)
        if code_head:
            code = self._code_scores(prefix, encoded["attention_mask"], candidate_ids.view(users, per_user, -1))
            scores += weights.view(users, per_user) * code
        if config.dense_head:
            queries = prefix.dense_queries[:, -1]  # (users, item_vector_size)
            scores += self._reranked_candidates(
                queries, self._item_scores(queries, flat, per_user=True, centred=True), candidates
            )
        return scores.tolist()

    def _reranked_candidates(
        self, queries: torch.Tensor, dense: torch.Tensor, candidates: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """``dense`` (users, per_user), the candidates' centred dense scores, with those of users whose domain the
        policy re-ranks (``RankingPolicy.reranks``) scored as ``rank`` orders their domain's whole catalogue: a
        candidate inside the prior's top ``whitened_rerank_top`` of the catalogue by its whitened prior, above the
        rest."""
        by_domain: dict[str, list[int]] = {}
        for user, row in enumerate(candidates):
            by_domain.setdefault(item_domain(row[0]), []).append(user)
        for domain, users in by_domain.items():
            if not self.policy.reranks(domain):
                continue
            catalogue = self.tokenizer.domain_items(domain)
            at = torch.tensor(users, device=dense.device)
            catalogue_scores = self._item_scores(queries[at], catalogue, centred=True)  # (len(users), items)
            top = catalogue_scores.topk(min(self.policy.whitened_rerank_top, len(catalogue)), dim=-1).values[:, -1:]
            keys = [key for user in users for key in candidates[user]]
            dense[at] = self._whitened_top(queries[at], dense[at], keys, top, per_user=True)
        return dense

    def _code_scores(self, prefix, attention_mask: torch.Tensor, candidate_ids: torch.LongTensor) -> torch.Tensor:
        """(users, per_user): each candidate's code log-likelihood after its history, whose forward pass (with its
        cache) is ``prefix``; candidate_ids (users, per_user, tokens_per_item)."""
        model = self.model
        users, per_user, _ = candidate_ids.shape
        # The history's cache is repeated for at most SCORING_ROWS (user, candidate) rows at a time, so memory
        # stays bounded whatever the number of candidates.
        history_cache = getattr(prefix, CACHE_FIELD)
        width = max(1, SCORING_ROWS // users)
        code = torch.empty(users, per_user, device=model.device)
        for start in range(0, per_user, width):
            ids = candidate_ids[:, start : start + width].reshape(-1, candidate_ids.shape[-1])  # (users * chunk, T)
            chunk = ids.shape[0] // users
            cache = copy.deepcopy(history_cache) if start + width < per_user else history_cache
            cache.batch_repeat_interleave(chunk)
            mask = torch.cat([attention_mask.repeat_interleave(chunk, 0), torch.ones_like(ids)], 1)
            continuation = model(ids, attention_mask=mask, cache=cache)
            last = prefix.logits[:, -1].repeat_interleave(chunk, 0)
            likelihood = code_log_likelihood(last, continuation.logits, ids)
            if self.policy.calibrated_code_score:
                likelihood = likelihood - empty_history_log_likelihood(model, ids, self.tokenizer.bos_token_id)
            code[:, start : start + chunk] = likelihood.view(users, chunk)
            del cache, continuation  # free this chunk's repeated cache before the next one is made
        return code


def code_log_likelihood(
    last_logits: torch.Tensor, continuation_logits: torch.Tensor, candidate_ids: torch.LongTensor
) -> torch.Tensor:
    """Summed log-probability of each candidate's codes: the first is predicted by ``last_logits`` (N, vocab),
    each later one by the candidate's previous code, ``continuation_logits`` (N, tokens_per_item, vocab)."""
    logits = torch.cat([last_logits[:, None], continuation_logits[:, :-1]], 1)
    return logits.float().log_softmax(-1).gather(-1, candidate_ids.unsqueeze(-1)).squeeze(-1).sum(-1)


@torch.no_grad()
def empty_history_log_likelihood(model, candidate_ids: torch.LongTensor, bos_token_id: int) -> torch.Tensor:
    """(N, tokens_per_item) -> (N,): the log-probability of each item's codes after ``<bos>`` alone, the item's
    prior under the model (what pointwise-mutual-information scoring subtracts)."""
    bos = torch.full((len(candidate_ids), 1), bos_token_id, dtype=torch.long, device=candidate_ids.device)
    logits = model(torch.cat([bos, candidate_ids], 1), use_cache=False).logits  # (N, 1 + T, vocab)
    return code_log_likelihood(logits[:, 0], logits[:, 1:], candidate_ids)


__all__ = ["RANKING_CONFIG_NAME", "ItemRanker", "RankingPolicy", "code_log_likelihood", "empty_history_log_likelihood"]
