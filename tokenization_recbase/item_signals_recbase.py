"""What the model reads about items beside their IDs: catalogue counts (the popularity buckets) and content vectors
(the dense head's), kept per item key by the tokenizer and saved with it.

``ItemSignalsMixin`` is part of ``RecBaseTokenizer``: it uses the tokenizer's item table (``_codes``,
``_check_key``, ``domain_items``), its quantizer (``code_latent_table``) and the state the tokenizer's
``__init__`` creates (``_counts``, ``_sorted_counts``, ``_vectors``, ``_domain_centres``).

Shipped beside the weights (with the tokenizer): imports only torch, the standard library and same-folder files.
"""

from __future__ import annotations

import bisect
import types
from collections.abc import Mapping, Sequence

import torch

from .vocabulary_recbase import item_domain


class ItemSignalsMixin:
    """Catalogue counts and content vectors of indexed items."""

    def set_item_counts(self, counts: Mapping[str, int]) -> None:
        """Catalogue counts: how many interactions each (indexed) item has in its domain's log. They feed the
        model's popularity buckets (the "zero-shot + catalogue counts" setting); items without one get none."""
        for key, count in counts.items():
            if int(count) < 0:
                raise ValueError(f"item {key!r}: a count must be >= 0, got {count!r}")
            self._counts[self._check_key(key)] = int(count)
        self._sorted_counts = None

    @property
    def item_counts(self) -> Mapping[str, int]:
        """Read-only: item key -> its catalogue count, for the items that have one."""
        return types.MappingProxyType(self._counts)

    def popularity_buckets(self, keys: Sequence[str], num_buckets: int) -> torch.LongTensor:
        """(len(keys),) bucket of each item: 0 when its count is unknown, else 1 + the share of its domain's
        counted items that have a smaller count, in ``num_buckets`` equal steps (so a bucket means the same
        in a catalogue of any size)."""
        if self._sorted_counts is None:
            by_domain: dict[str, list[int]] = {}
            for key, count in self._counts.items():
                by_domain.setdefault(item_domain(key), []).append(count)
            self._sorted_counts = {domain: sorted(counts) for domain, counts in by_domain.items()}
        buckets = []
        for key in keys:
            if key not in self._counts:
                buckets.append(0)
                continue
            ordered = self._sorted_counts[item_domain(key)]
            below = bisect.bisect_left(ordered, self._counts[key]) / len(ordered)  # in [0, 1)
            buckets.append(1 + min(num_buckets - 1, int(below * num_buckets)))
        return torch.tensor(buckets, dtype=torch.long)

    def set_item_vectors(self, vectors: Mapping[str, torch.Tensor]) -> None:
        """Each item's content vector: its aligned text embedding, the quantizer's input (what ``add_items``
        computes and stores). All stored vectors have one size."""
        sizes = {vector.shape[-1] for vector in vectors.values()} | (
            {self.item_vector_size} if self._vectors else set()
        )
        if len(sizes) > 1:
            raise ValueError(f"item vectors must all have one size, got sizes {sorted(sizes)}")
        for key, vector in vectors.items():
            self._vectors[self._check_key(key)] = vector.detach().half().float()  # as saved: the same after a reload
        self._domain_centres.clear()

    @property
    def item_vector_size(self) -> int:
        """Size of the content vectors ``item_vectors`` returns (stored ones, else the quantizer's latent)."""
        if self._vectors:
            return next(iter(self._vectors.values())).shape[-1]
        return self._quantizer.config["latent_dim"] if self._quantizer is not None else 0

    def item_vectors(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys), item_vector_size) content vectors for the dense head: an item's stored vector, or else
        (only where stored vectors are latent-sized) the sum of its code vectors (its quantized latent).

        The stored vector keeps what quantization loses: the nearest neighbours of an item
        (``benchmarks/results/content_vectors.md`` compares the two)."""
        codes = None
        rows = []
        for key in keys:
            if key in self._vectors:
                rows.append(self._vectors[key])
                continue
            if self._quantizer is None or self.item_vector_size != self._quantizer.config["latent_dim"]:
                raise ValueError(f"item {key!r} has no content vector: index it with add_items")
            if codes is None:
                codes = self.code_latent_table(self.layout.size)
            rows.append(codes[self.codes_to_token_ids(self._codes[self._check_key(key)])].sum(0))
        return torch.stack(rows) if rows else torch.zeros(0, self.item_vector_size)

    def domain_centres(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys), item_vector_size): for each item, the mean unit content vector of its domain's items."""
        for domain in {item_domain(key) for key in keys} - set(self._domain_centres):
            vectors = self.item_vectors(self.domain_items(domain))
            self._domain_centres[domain] = torch.nn.functional.normalize(vectors, dim=-1).mean(0)
        return torch.stack([self._domain_centres[item_domain(key)] for key in keys])

    def _load_item_vectors(self, path: str) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            vectors = dict(zip(state["keys"], state["vectors"].float()))
        except Exception as error:
            raise ValueError(f"{path}: not a RecBase item-vectors file ({error})") from error
        self.set_item_vectors(vectors)
