"""What the model reads about items beside their IDs: catalogue counts (the popularity buckets) and content vectors
(the dense head's), kept per item key by the tokenizer and saved with it.

``ItemSignalsMixin`` is part of ``RecBaseTokenizer``: it uses the tokenizer's item table (``_codes``,
``_check_key``, ``_gather``), its per-domain tables (``_tables``, ``item_store_recbase.DomainItems``), its quantizer
(``code_latent_table``) and the state the tokenizer's ``__init__`` creates (``_counts``, ``_vector_size``).

Shipped beside the weights (with the tokenizer): imports only torch, the standard library and same-folder files.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence

import torch

from .item_store_recbase import NO_COUNT, DomainItems, group_by_domain


class ItemSignalsMixin:
    """Catalogue counts and content vectors of indexed items."""

    def set_item_counts(self, counts: Mapping[str, int]) -> None:
        """Catalogue counts: how many interactions each (indexed) item has in its domain's log. They feed the
        model's popularity buckets (the "zero-shot + catalogue counts" setting); items without one get none."""
        for key, count in counts.items():
            if int(count) < 0:
                raise ValueError(f"item {key!r}: a count must be >= 0, got {count!r}")
            self._check_key(key)
        for domain, keys in group_by_domain(counts).items():
            table = self._tables[domain]
            table.set_counts(table.rows(keys), torch.tensor([int(counts[key]) for key in keys], dtype=torch.long))
        self._counts.update((key, int(count)) for key, count in counts.items())

    @property
    def item_counts(self) -> Mapping[str, int]:
        """Read-only: item key -> its catalogue count, for the items that have one."""
        return types.MappingProxyType(self._counts)

    def catalogue_counts(self, keys: Sequence[str]) -> torch.LongTensor:
        """(len(keys),) the catalogue count of each item, ``NO_COUNT`` (-1) where none was given."""
        return self._gather(keys, lambda table: table.counts, torch.zeros(0, dtype=torch.long))

    def popularity_buckets(self, keys: Sequence[str], num_buckets: int) -> torch.LongTensor:
        """(len(keys),) bucket of each item: 0 when its count is unknown, else 1 + the share of its domain's
        counted items that have a smaller count, in ``num_buckets`` equal steps (so a bucket means the same
        in a catalogue of any size)."""

        def buckets(table: DomainItems) -> torch.Tensor:
            counts = table.counts
            known = counts != NO_COUNT
            ordered = counts[known].sort().values
            below = torch.searchsorted(ordered, counts).double() / max(len(ordered), 1)  # in [0, 1)
            bucket = 1 + (below * num_buckets).long().clamp(max=num_buckets - 1)
            return torch.where(known, bucket, 0)

        return self._gather(
            keys, lambda table: table.derived(f"buckets-{num_buckets}", buckets), torch.zeros(0, dtype=torch.long)
        )

    def set_item_vectors(self, vectors: Mapping[str, torch.Tensor]) -> None:
        """Each item's content vector: its aligned text embedding, the quantizer's input (what ``add_items``
        computes and stores). All stored vectors have one size."""
        keys = list(vectors)
        if keys:
            self._set_vectors(keys, torch.stack([vectors[key].detach() for key in keys]))

    def _set_vectors(self, keys: Sequence[str], vectors: torch.Tensor) -> None:
        """(len(keys), size) content vectors for indexed ``keys``."""
        sizes = {vectors.shape[-1]} | ({self._vector_size} if self._vector_size else set())
        if len(sizes) > 1:
            raise ValueError(f"item vectors must all have one size, got sizes {sorted(sizes)}")
        for key in keys:
            self._check_key(key)
        vectors = vectors.detach().half().float()  # as saved: the same after a reload
        self._vector_size = vectors.shape[-1]
        position = {key: index for index, key in enumerate(keys)}
        for domain, domain_keys in group_by_domain(keys).items():
            table = self._tables[domain]
            at = torch.tensor([position[key] for key in domain_keys], dtype=torch.long)
            table.set_vectors(table.rows(domain_keys), vectors[at])

    @property
    def item_vector_size(self) -> int:
        """Size of the content vectors ``item_vectors`` returns (stored ones, else the quantizer's latent)."""
        if self._vector_size:
            return self._vector_size
        return self._quantizer.config["latent_dim"] if self._quantizer is not None else 0

    def item_vectors(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys), item_vector_size) content vectors for the dense head: an item's stored vector, or else
        (only where stored vectors are latent-sized) the sum of its code vectors (its quantized latent).

        The stored vector keeps what quantization loses: the nearest neighbours of an item
        (``benchmarks/results/content_vectors.md`` compares the two)."""
        return self._gather(keys, self._domain_vectors, torch.zeros(0, self.item_vector_size))

    def unit_item_vectors(self, keys: Sequence[str]) -> torch.Tensor:
        """``item_vectors`` scaled to unit length (``torch.nn.functional.normalize``), kept per domain until it
        changes: what the dense head's cosine reads, without normalising a whole domain on every call."""

        def unit(table: DomainItems) -> torch.Tensor:
            return torch.nn.functional.normalize(self._domain_vectors(table), dim=-1)

        return self._gather(keys, lambda table: table.derived("unit", unit), torch.zeros(0, self.item_vector_size))

    def _domain_vectors(self, table: DomainItems) -> torch.Tensor:
        """(n, item_vector_size) the content vectors of one domain's items (see ``item_vectors``)."""
        if table.vectors is not None and bool(table.has_vector.all()):
            return table.vectors
        return table.derived("vectors", self._vectors_with_latents)

    def _vectors_with_latents(self, table: DomainItems) -> torch.Tensor:
        missing = (~table.has_vector).nonzero().squeeze(-1)
        if self._quantizer is None or self.item_vector_size != self._quantizer.config["latent_dim"]:
            raise ValueError(f"item {table.keys[int(missing[0])]!r} has no content vector: index it with add_items")
        latents = self.code_latent_table(self.layout.size)[table.token_ids[missing]].sum(1)
        vectors = table.vectors.clone() if table.vectors is not None else torch.zeros(len(table), latents.shape[-1])
        vectors[missing] = latents
        return vectors

    def domain_centres(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys), item_vector_size): for each item, the mean unit content vector of its domain's items."""

        def centre(table: DomainItems) -> torch.Tensor:
            return self.unit_item_vectors(table.keys).mean(0)

        return self._gather(
            keys,
            lambda table: table.derived("centre", centre).expand(len(table), -1),
            torch.zeros(0, self.item_vector_size),
        )

    def whitened_unit_item_vectors(self, keys: Sequence[str], power: float) -> torch.Tensor:
        """(len(keys), item_vector_size): ``unit_item_vectors`` with every axis of the domain's aligned frame (its
        principal axes) multiplied by ``domain_whitening_scales``, then scaled to unit length again."""
        return self._gather(
            keys, lambda table: self._whitening(table, power)["unit"], torch.zeros(0, self.item_vector_size)
        )

    def domain_whitening_scales(self, keys: Sequence[str], power: float) -> torch.Tensor:
        """(len(keys), item_vector_size): for each item, its domain's per-axis scales: each axis's variance over the
        domain's content vectors to the power ``-power / 2`` (1: whitening, every axis the same variance), a
        variance under 1e-6 of the largest counted as that floor. A domain's own items set them, no other's."""
        return self._gather(
            keys,
            lambda table: self._whitening(table, power)["scales"].expand(len(table), -1),
            torch.zeros(0, self.item_vector_size),
        )

    def whitened_domain_centres(self, keys: Sequence[str], power: float) -> torch.Tensor:
        """(len(keys), item_vector_size): for each item, the mean of its domain's ``whitened_unit_item_vectors``."""
        return self._gather(
            keys,
            lambda table: self._whitening(table, power)["centre"].expand(len(table), -1),
            torch.zeros(0, self.item_vector_size),
        )

    def _whitening(self, table: DomainItems, power: float) -> dict[str, torch.Tensor]:
        """One domain's axis scales (D,), whitened unit vectors (n, D) and their mean (D,), kept until it changes."""

        def build(table: DomainItems) -> dict[str, torch.Tensor]:
            variances = self._domain_vectors(table).var(0, correction=1 if len(table) > 1 else 0)
            scales = variances.clamp(min=max(float(variances.max()) * 1e-6, 1e-12)).pow(-power / 2)
            unit = torch.nn.functional.normalize(self.unit_item_vectors(table.keys) * scales, dim=-1)
            return {"scales": scales, "unit": unit, "centre": unit.mean(0)}

        return table.derived(f"whitening-{power!r}", build)

    def _load_item_vectors(self, path: str) -> None:
        """A previous release's ``item_vectors.pt`` (tensors only, read without unpickling code); vectors of keys
        the item table does not hold are left out."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            rows = [index for index, key in enumerate(state["keys"]) if key in self._codes]
            keys, vectors = [state["keys"][index] for index in rows], state["vectors"][rows].float()
        except Exception as error:
            raise ValueError(f"{path}: not a RecBase item-vectors file ({error})") from error
        if keys:
            self._set_vectors(keys, vectors)
