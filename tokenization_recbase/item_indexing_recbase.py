"""Cold start: new items (even a whole new domain) get concept IDs from their text, with no retraining.

``ItemIndexingMixin`` is part of ``RecBaseTokenizer``: it uses the tokenizer's item table (``set_items``,
``_codes``, ``_key_by_codes``), its quantizer and domain alignments, and its item signals (``set_item_vectors``,
``set_item_counts``).

Shipped beside the weights (with the tokenizer): imports only torch, the standard library and same-folder files.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers.utils import logging

from .embedding_cache_recbase import EmbeddingCache, default_cache_dir
from .item_store_recbase import group_by_domain
from .item_text_recbase import TextEncoder, check_item_fields, unified_item_text
from .quantization_recbase import SMALL_NEW_DOMAIN, TOO_FEW_TO_ALIGN, align_by_domain, assign_unique_codes
from .vocabulary_recbase import is_item_key, item_domain

logger = logging.get_logger(__name__)


class ItemIndexingMixin:
    """Item texts from fields, their embeddings, and ``add_items``."""

    def item_text_from_fields(self, fields: Mapping, check: bool = False) -> str:
        """An item's unified text from its fields (``title``, ``brand``, ``categories``, ``description``,
        ``year``, ``price``, ``item_type``), with this tokenizer's saved template settings; a category string is split
        as the corpus readers split it. Other fields (a corpus row's key, domain, id) are not part of the text; with
        ``check`` (an item a user describes) unknown fields, or none with text, raise a ValueError naming them."""
        if check:
            check_item_fields(fields)
        return unified_item_text(fields, self.item_text_field_limits, self.item_text_max_categories)

    def embed_texts(
        self,
        texts: Sequence[str],
        progress: bool = False,
        cache_dir: str | os.PathLike | None = None,
        cache_embeddings: bool = True,
    ) -> torch.Tensor:
        """Embed item texts with the tokenizer's text encoder (loaded on first use): (len(texts), dim).

        Through the embedding cache in ``cache_dir`` (default ``$RECBASE_CACHE/embeddings``, else
        ``~/.cache/recbase/embeddings``), so a text embedded once, in any call or process, is never embedded
        again; ``cache_embeddings=False`` embeds without it (texts used once, such as a pipeline call's)."""
        if self._encoder is None:
            self._encoder = TextEncoder(self.text_encoder, max_length=self.text_max_length)
        if not cache_embeddings:
            return self._encoder.encode(list(texts), progress=progress)
        folder = Path(cache_dir if cache_dir is not None else default_cache_dir())
        if self._embedding_cache is None or self._embedding_cache.folder.parent != folder:
            self._embedding_cache = EmbeddingCache(self.text_encoder, folder, self.text_max_length, self._encoder)
        return self._embedding_cache.embed(list(texts), progress=progress)

    def add_items(
        self,
        keys: Sequence[str],
        texts: Sequence[str | Mapping] | None = None,
        embeddings: torch.Tensor | None = None,
        counts: Sequence[int] | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache_embeddings: bool = True,
    ) -> dict[str, tuple[int, ...]]:
        """Cold start: index new items with the frozen quantizer, unique against every existing ID.

        Args:
            keys: new item keys ``"<domain>/<item_id>"``.
            texts: their unified texts, or their fields (``{"title": ..., "categories": [...], "item_type": "book"}``,
                written with ``item_text_from_fields``; unknown fields, or none with text, raise); embedded with
                ``text_encoder`` unless ``embeddings`` are given; kept for ``item_text``.
            embeddings: (len(keys), input_dim) precomputed text embeddings.
            counts: optional catalogue counts (interactions per item in its domain's log), see ``set_item_counts``.
            cache_dir, cache_embeddings: where the text embeddings are cached, and whether (see ``embed_texts``). A
                call that fails after embedding (IDs exhausted, a kill) loses no embedding: calling it again embeds
                nothing.
        Returns:
            key -> code tuple for the new items.
        """
        if self._quantizer is None:
            raise ValueError("this tokenizer has no quantizer, so it cannot index new items")
        keys = list(keys)
        for name, values in (("texts", texts), ("counts", counts)):
            if values is not None and len(values) != len(keys):
                raise ValueError(f"{len(keys)} keys but {len(values)} {name}")
        for index, key in enumerate(keys):
            if not is_item_key(key):
                raise ValueError(f"item key #{index} {key!r} is not of the form '<domain>/<item_id>'")
        if texts is not None:
            texts = [
                self.item_text_from_fields(text, check=True) if isinstance(text, Mapping) else text for text in texts
            ]
        for key, text in zip(keys, texts or []):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"item {key!r} has an empty text: nothing to embed")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"item {key!r}: its text is not valid Unicode ({error.reason} at character {error.start})"
                ) from error
        duplicates = sorted({key for key, count in Counter(keys).items() if count > 1 or key in self._codes})
        if duplicates:
            raise ValueError(f"items already indexed or repeated: {duplicates[:5]}")
        if embeddings is None:
            if texts is None:
                raise ValueError("add_items needs texts or embeddings")
            # A new domain that its alignment would refuse after the embedding (the slow part) is refused before it.
            text_of = dict(zip(keys, texts))
            for domain, domain_keys in group_by_domain(keys).items():
                if domain not in self._alignments and len({text_of[key] for key in domain_keys}) < 2:
                    raise ValueError(f"new domain {domain!r}: {TOO_FEW_TO_ALIGN}")
            embeddings = self.embed_texts(  # a bar when it takes seconds
                texts, progress=len(texts) >= 256, cache_dir=cache_dir, cache_embeddings=cache_embeddings
            )
        if embeddings.shape != (len(keys), self._quantizer.config["input_dim"]):
            raise ValueError(
                f"embeddings of shape {tuple(embeddings.shape)}, expected "
                f"({len(keys)}, {self._quantizer.config['input_dim']})"
            )
        domains = [item_domain(key) for key in keys]
        self._warn_if_frame_fitted_on_few(Counter(domains))
        # Each item in its domain's frame; a domain seen for the first time is aligned on these items.
        aligned = align_by_domain(embeddings, domains, self._alignments)
        codes, distances = self._quantizer.encode_to_codes(aligned)
        new_codes = assign_unique_codes(codes, distances, set(self._key_by_codes), self.disambiguation_size)
        self.set_items(dict(zip(keys, new_codes)), dict(zip(keys, texts or [""] * len(keys))))
        self._set_vectors(keys, aligned)
        if counts is not None:
            self.set_item_counts(dict(zip(keys, counts)))
        return dict(zip(keys, new_codes))

    def _warn_if_frame_fitted_on_few(self, new_per_domain: Counter) -> None:
        """A warning when items join a domain whose frame was fitted on fewer items than they are (a first call with
        a few items): the frame stays as it is until ``refit_domain``."""
        for domain, new in new_per_domain.items():
            held = len(self._tables[domain]) if domain in self._tables else 0
            if 0 < held < SMALL_NEW_DOMAIN and new > held:
                logger.warning(
                    f"domain {domain!r}'s frame was fitted on its first {held} items and is kept for these {new}: "
                    f"call tokenizer.refit_domain({domain!r}) after indexing the rest for better IDs"
                )

    def refit_domain(self, domain: str) -> dict[str, tuple[int, ...]]:
        """Fit ``domain``'s frame again on all its items now indexed, and give them new IDs in it (texts, counts
        and keys are kept; the vectors are the same embeddings in the new frame). For a domain first indexed with
        a few items: the frame indexing them all at once fits (its centre and principal axes), up to the float16
        rounding of stored vectors, which can turn axes of nearly equal variance. Returns key -> new code tuple."""
        keys = self.domain_items(domain)
        alignment = self._alignments[domain]
        # The frame is an isometry (centre, then rotate): its inverse gives back each item's text embedding.
        embeddings = self.item_vectors(keys) @ alignment["rotation"].T + alignment["mean"]
        texts = [self._texts[key] for key in keys]
        counts = {key: self._counts[key] for key in keys if key in self._counts}
        self.remove_items(keys)  # the domain's IDs become free and its frame is forgotten
        codes = self.add_items(keys, embeddings=embeddings)
        self._texts.update(zip(keys, texts))
        self.set_item_counts(counts)
        return codes


__all__ = ["ItemIndexingMixin"]
