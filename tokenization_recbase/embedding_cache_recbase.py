"""Text embeddings of items, cached on disk by (encoder, text): a second run, or a call after a failed one, embeds
only the texts it has never seen.

``add_items`` embeds through this cache (by default under ``$RECBASE_CACHE/embeddings``, else
``~/.cache/recbase/embeddings``), and so do the training scripts.

Shipped beside the weights (with the tokenizer): imports only torch, the standard library and same-folder files.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers.utils.logging import tqdm

from .item_text_recbase import DEFAULT_TEXT_ENCODER, TEXT_MAX_LENGTH, TextEncoder
from .saving_recbase import write_atomically

SHARD_SIZE = 4096  # texts per cache shard: an interrupted run loses at most one shard of work


def default_cache_dir() -> Path:
    """``$RECBASE_CACHE/embeddings``, else ``~/.cache/recbase/embeddings`` (read when called)."""
    return Path(os.environ.get("RECBASE_CACHE", Path.home() / ".cache" / "recbase")) / "embeddings"


class EmbeddingCache:
    """Append-only shards ``<cache_dir>/<encoder slug>/shard-*.pt``, each ``{"keys": [sha1], "vectors": (n, dim)}``.

    Every shard goes to a temp file renamed into place under a name no other writer uses, so a run killed mid-way
    keeps all finished shards and two processes filling one cache lose nothing. ``encoder``: an already loaded
    ``TextEncoder`` for ``encoder_name`` (else one is loaded when a text is missing).
    """

    def __init__(
        self,
        encoder_name: str = DEFAULT_TEXT_ENCODER,
        cache_dir: str | Path | None = None,
        max_length: int = TEXT_MAX_LENGTH,
        encoder: TextEncoder | None = None,
    ) -> None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{encoder_name}-len{max_length}").strip("_")
        self.folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / slug
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoder_name, self.max_length, self.encoder = encoder_name, max_length, encoder
        self._vectors: dict[str, torch.Tensor] = {}
        self._read_shards: set[str] = set()
        self._read_new_shards()

    def _read_new_shards(self) -> None:
        """Load the shards written since the last look (by this process or another)."""
        for shard in sorted(self.folder.glob("shard-*.pt")):
            if shard.name not in self._read_shards:
                data = torch.load(shard, weights_only=True)
                self._vectors.update(zip(data["keys"], data["vectors"]))
                self._read_shards.add(shard.name)

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """texts -> (len(texts), dim) embeddings; only texts never seen before are encoded (each unique once)."""
        if not texts:
            raise ValueError("no texts to embed")
        self._read_new_shards()
        keys = [self.key(text) for text in texts]
        missing = list({k: t for k, t in zip(keys, texts) if k not in self._vectors}.items())
        if missing:
            if self.encoder is None:
                self.encoder = TextEncoder(self.encoder_name, max_length=self.max_length)
            bar = tqdm(total=len(missing), desc="embedding items", unit="text", disable=not progress)
            for start in range(0, len(missing), SHARD_SIZE):
                chunk = missing[start : start + SHARD_SIZE]
                vectors = self.encoder.encode([t for _, t in chunk], batch_size=batch_size, bar=bar)
                self._write_shard([k for k, _ in chunk], vectors)
                self._vectors.update(zip((k for k, _ in chunk), vectors))
            bar.close()
        return torch.stack([self._vectors[k] for k in keys])

    def _write_shard(self, keys: list[str], vectors: torch.Tensor) -> None:
        name = f"shard-{time.time_ns():020d}-{os.getpid()}.pt"  # sorts by time; unique to this writer
        write_atomically(
            self.folder / name, lambda temporary: torch.save({"keys": keys, "vectors": vectors}, temporary)
        )
        self._read_shards.add(name)


__all__ = ["SHARD_SIZE", "EmbeddingCache", "default_cache_dir"]
