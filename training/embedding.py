"""Text embeddings of items, cached on disk by (encoder, text) so that a second run embeds nothing."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tokenization_recbase import DEFAULT_TEXT_ENCODER, TextEncoder
from tokenization_recbase.item_text_recbase import TEXT_MAX_LENGTH
from training.checkpoint import write_atomically

SHARD_SIZE = 4096  # texts per cache shard: an interrupted run loses at most one shard of work
DEFAULT_CACHE_DIR = Path(os.environ.get("RECBASE_CACHE", Path.home() / ".cache" / "recbase")) / "embeddings"


class EmbeddingCache:
    """Append-only shards ``<cache_dir>/<encoder slug>/shard-*.pt``, each ``{"keys": [sha1], "vectors": (n, dim)}``.

    Every write goes to a temp file renamed into place, so a run killed mid-way keeps all finished shards.
    """

    def __init__(
        self,
        encoder: str = DEFAULT_TEXT_ENCODER,
        cache_dir: str | Path = DEFAULT_CACHE_DIR,
        max_length: int = TEXT_MAX_LENGTH,
    ) -> None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{encoder}-len{max_length}").strip("_")
        self.folder = Path(cache_dir) / slug
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.max_length = max_length
        self._vectors: dict[str, torch.Tensor] = {}
        for shard in sorted(self.folder.glob("shard-*.pt")):
            data = torch.load(shard, weights_only=True)
            self._vectors.update(zip(data["keys"], data["vectors"]))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """texts -> (len(texts), dim) embeddings; only texts never seen before are encoded (each unique once)."""
        keys = [self.key(text) for text in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self._vectors}
        if missing:
            encoder = TextEncoder(self.encoder, max_length=self.max_length)
            items = list(missing.items())
            bar = tqdm(
                total=len(items), desc="embedding items", unit="text", disable=not progress
            )  # one bar, real total
            for start in range(0, len(items), SHARD_SIZE):
                chunk = items[start : start + SHARD_SIZE]
                vectors = encoder.encode([t for _, t in chunk], batch_size=batch_size, bar=bar)
                shard = self.folder / f"shard-{len(list(self.folder.glob('shard-*.pt'))):05d}.pt"
                state = {"keys": [k for k, _ in chunk], "vectors": vectors}
                write_atomically(shard, lambda temporary: torch.save(state, temporary))
                self._vectors.update(zip((k for k, _ in chunk), vectors))
            bar.close()
        if not keys:
            raise ValueError("no texts to embed")
        return torch.stack([self._vectors[k] for k in keys])
