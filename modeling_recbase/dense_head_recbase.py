"""The dense head: its training-free prior, its query (prior + learned residual), cosine scores and its loss.

``RecBaseDenseHeadMixin`` is part of ``RecBaseForCausalLM``, which creates its parameters (``dense_proj``, the
residual, zero at init; ``popularity_bias``) and its frozen code-vector table (``model.code_latents``).

Shipped beside the weights: imports only torch and the standard library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RecBaseDenseHeadMixin:
    """The dense head of ``RecBaseForCausalLM`` (the LIGER idea): the next item's content vector, scored by cosine."""

    def _check_code_vectors_stand_in(self) -> None:
        if self.config.item_vector_size != self.config.latent_dim:
            raise ValueError(
                f"this model's dense head scores {self.config.item_vector_size}-number item vectors, which "
                "code vectors cannot stand in for: pass item_vectors (tokenizer.encode_history(..., "
                "return_item_vectors=True)) and negative_vectors"
            )

    def item_latents(self, item_token_ids: torch.LongTensor) -> torch.Tensor:
        """(..., tokens_per_item) token ids of items -> (..., latent_dim) content vectors (sum of code vectors)."""
        self._check_code_vectors_stand_in()
        return self.model.code_latents(item_token_ids).sum(-2)

    def item_vectors_at_ends(
        self, content_ids: torch.LongTensor, item_vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(batch, seq) -> (batch, seq, item_vector_size): at a position where an item ends, its content vector (from
        ``item_vectors`` when given, else the sum of its code vectors); elsewhere zero or meaningless."""
        if item_vectors is not None:
            return item_vectors.float()
        self._check_code_vectors_stand_in()
        summed = self.model.code_latents(content_ids).cumsum(1)  # (batch, seq, latent)
        return summed - F.pad(summed, (0, 0, self.config.tokens_per_item, 0))[:, : summed.shape[1]]

    def dense_prior(self, content_ids: torch.LongTensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq) -> (batch, seq, item_vector_size): at a position where an item ends, the recency-weighted sum
        of the unit content vectors of that item and the ``dense_history_items - 1`` before it (weights
        ``dense_history_decay ** k`` for the item k steps back); elsewhere meaningless. It needs no training.

        Items are contiguous runs of ``tokens_per_item`` tokens (padding only on the left), so the item k steps
        back ends exactly ``k * tokens_per_item`` positions earlier; specials have zero vectors, so steps back
        past the history's start add nothing."""
        tokens_per_item, length = self.config.tokens_per_item, content_ids.shape[1]
        unit = F.normalize(self.item_vectors_at_ends(content_ids, item_vectors), dim=-1)
        return sum(
            self.config.dense_history_decay**k * F.pad(unit, (0, 0, k * tokens_per_item, 0))[:, :length]
            for k in range(self.config.dense_history_items)
        )

    def dense_queries(
        self,
        hidden_states: torch.Tensor,
        content_ids: torch.LongTensor,
        item_vectors: torch.Tensor | None = None,
        residual_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, seq, hidden), (batch, seq) -> (batch, seq, item_vector_size): at a position where an item ends, the
        predicted content vector of the next item: the recent items' (``dense_prior``) plus the head's learned
        residual (zero at init), scaled per row by ``residual_weights`` (batch,) when given. The whole items must be
        in ``content_ids`` (no cache)."""
        if self.dense_proj is None:
            raise ValueError("this model has no dense head (config.dense_head is False)")
        prior = self.dense_prior(content_ids, item_vectors)
        residual = self.dense_proj(hidden_states).to(prior.dtype)
        if residual_weights is not None:
            residual = residual * residual_weights.to(prior.dtype).view(-1, 1, 1)
        return prior + residual

    def dense_scores(
        self,
        queries: torch.Tensor,
        latents: torch.Tensor,
        buckets: torch.LongTensor | None = None,
        centres: torch.Tensor | None = None,
        unit_latents: bool = False,
    ) -> torch.Tensor:
        """Cosine / ``dense_temperature`` (+ the popularity bias of each candidate's bucket).

        queries (..., item_vector_size); latents (..., candidates, item_vector_size), or (candidates, ...) shared by
        every query; buckets like latents without the last axis -> scores (..., candidates). ``centres`` (like
        latents): subtracted from the unit candidate vectors, e.g. their domain's mean unit vector. That takes
        the same amount off every candidate of a domain for one query, so a user's ranking is unchanged, but
        scores of different users become comparable (zero for an average item). ``unit_latents``: the latents are
        already ``F.normalize``'d (the tokenizer's ``unit_item_vectors``), so they are not normalised again."""
        queries = F.normalize(queries.float(), dim=-1).unsqueeze(-1)  # (..., latent, 1)
        candidates = latents.float() if unit_latents else F.normalize(latents.float(), dim=-1)
        if centres is not None:
            candidates = candidates - centres.float()
        scores = (candidates @ queries).squeeze(-1) / self.config.dense_temperature
        if buckets is not None and self.popularity_bias is not None:
            scores = scores + self.popularity_bias(buckets).squeeze(-1)
        return scores

    def dense_loss(
        self,
        hidden_states: torch.Tensor,
        content_ids: torch.LongTensor,
        negative_ids: torch.LongTensor,
        item_vectors: torch.Tensor | None = None,
        negative_vectors: torch.Tensor | None = None,
        bucket_ids: torch.LongTensor | None = None,
        negative_buckets: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Softmax cross-entropy of each true next item against the row's negatives, at every position where an
        item ends and another follows. hidden_states (batch, seq, hidden); content_ids (batch, seq);
        negative_ids (batch, negatives, tokens_per_item); item_vectors (batch, seq, latent); negative_vectors
        (batch, negatives, latent); bucket_ids (batch, seq); negative_buckets (batch, negatives)."""
        tokens_per_item = self.config.tokens_per_item
        is_item_end = self.config.layout.is_item_end(content_ids)  # (batch, seq)
        has_next = F.pad(is_item_end[:, tokens_per_item:], (0, tokens_per_item), value=False)
        rows, positions = (is_item_end & has_next).nonzero(as_tuple=True)  # (pairs,)
        if rows.numel() == 0:
            return hidden_states.sum() * 0.0
        at_ends = self.item_vectors_at_ends(content_ids, item_vectors)  # (batch, seq, latent), computed once
        queries = self.dense_queries(hidden_states, content_ids, at_ends)[rows, positions]  # (pairs, latent)
        following = content_ids.unfold(1, tokens_per_item, 1)  # (batch, seq - T + 1, T): following[b, s] = ids[s:s+T]
        targets = following[rows, positions + 1]  # (pairs, T)
        negatives = negative_ids[rows]  # (pairs, negatives, T)
        target_vectors = at_ends[rows, positions + tokens_per_item]
        negative_vectors = self.item_latents(negatives) if negative_vectors is None else negative_vectors[rows].float()
        vectors = torch.cat([target_vectors[:, None], negative_vectors], 1)  # (pairs, 1 + negatives, latent)
        buckets = None
        if bucket_ids is not None and negative_buckets is not None:
            buckets = torch.cat([bucket_ids[rows, positions + 1, None], negative_buckets[rows]], 1)
        scores = self.dense_scores(queries, vectors, buckets)  # (pairs, 1 + negatives)
        # A sampled negative that is the target itself is no negative.
        same = F.pad((negatives == targets[:, None]).all(-1), (1, 0), value=False)
        scores = scores.masked_fill(same, float("-inf"))
        return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))


__all__ = ["RecBaseDenseHeadMixin"]
