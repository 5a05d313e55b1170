"""Where the tokenizer keeps its items: one ``DomainItems`` table per domain, and the file that saves them all.

Ranking one domain reads that domain's table only (its keys, token ids, content vectors, centre and catalogue
counts as tensors), so a call costs the same whatever else is indexed. Tables grow and shrink in place when items
are added or removed; what is derived from them (the centre, the popularity buckets) is rebuilt on first use after a
change, for that domain alone.

The whole item state (every item's key, codes, text, count and content vector, and each domain's alignment) is one
safetensors file, ``items.safetensors``: a save replaces it in one rename, so a folder never holds a mix of two
saves, and it loads without pickle.

Shipped beside the weights (with the tokenizer): imports only torch, transformers, the standard library and
same-folder files (safetensors through transformers, which depends on it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from transformers.modeling_utils import safe_open, safe_save_file

from .vocabulary_recbase import item_domain

ITEMS_FORMAT = "recbase-items/1"
METADATA_KEY = "recbase"  # the file's one metadata entry, a JSON object
NO_COUNT = -1  # a row's count when the user gave none


def group_by_domain(keys) -> dict[str, list[str]]:
    """Item keys -> domain -> its keys, in the order given."""
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(item_domain(key), []).append(key)
    return grouped


class DomainItems:
    """One domain's items in indexing order: ``keys``, ``row_of`` (key -> row), and per row the token ids, the content
    vector (where one is stored) and the catalogue count (``NO_COUNT`` where none was given).

    Rows live in buffers with room to grow, so adding a few items (or removing the last ones added) copies nothing."""

    def __init__(self, tokens_per_item: int) -> None:
        self.keys: list[str] = []
        self.row_of: dict[str, int] = {}
        self._token_ids = torch.zeros(0, tokens_per_item, dtype=torch.long)
        self._vectors: torch.Tensor | None = None  # (capacity, vector size), created with the first vectors
        self._has_vector = torch.zeros(0, dtype=torch.bool)
        self._counts = torch.zeros(0, dtype=torch.long)
        self._derived: dict[str, object] = {}  # centre, buckets, texts: rebuilt on first use after a change

    @classmethod
    def from_rows(
        cls,
        keys: list[str],
        token_ids: torch.Tensor,
        vectors: torch.Tensor | None,
        has_vector: torch.Tensor,
        counts: torch.Tensor,
    ) -> DomainItems:
        """A table holding these rows as they are (loading a saved file: no per-row work beyond the key index)."""
        table = cls(token_ids.shape[1])
        table.keys, table.row_of = keys, {key: row for row, key in enumerate(keys)}
        table._token_ids, table._has_vector, table._counts = token_ids, has_vector, counts
        table._vectors = vectors
        return table

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys),) the row of each of this table's ``keys``."""
        return torch.tensor([self.row_of[key] for key in keys], dtype=torch.long)

    @property
    def token_ids(self) -> torch.Tensor:
        """(n, tokens_per_item) each item's token ids."""
        return self._token_ids[: len(self)]

    @property
    def has_vector(self) -> torch.Tensor:
        """(n,) whether the item has a stored content vector."""
        return self._has_vector[: len(self)]

    @property
    def vectors(self) -> torch.Tensor | None:
        """(n, vector size) stored content vectors (zeros where ``has_vector`` is False), or None if none is stored."""
        return None if self._vectors is None else self._vectors[: len(self)]

    @property
    def counts(self) -> torch.Tensor:
        """(n,) catalogue counts, ``NO_COUNT`` where none was given."""
        return self._counts[: len(self)]

    def _grow(self, extra: int) -> None:
        """Make room for ``extra`` more rows (capacity at least doubles, so n additions copy O(n) in all)."""
        needed = len(self) + extra
        if needed <= len(self._token_ids):
            return
        capacity = max(needed, 2 * len(self._token_ids), 16)

        def grown(buffer: torch.Tensor) -> torch.Tensor:
            bigger = buffer.new_zeros(capacity, *buffer.shape[1:])
            bigger[: len(self)] = buffer[: len(self)]
            return bigger

        self._token_ids, self._has_vector, self._counts = map(grown, (self._token_ids, self._has_vector, self._counts))
        if self._vectors is not None:
            self._vectors = grown(self._vectors)

    def append(self, keys: Sequence[str], token_ids: torch.Tensor) -> None:
        """New items at the end: keys (m,) and their token ids (m, tokens_per_item); no vectors or counts yet."""
        self._grow(len(keys))
        start = len(self)
        self._token_ids[start : start + len(keys)] = token_ids
        self._has_vector[start : start + len(keys)] = False
        self._counts[start : start + len(keys)] = NO_COUNT
        self.row_of.update((key, start + offset) for offset, key in enumerate(keys))
        self.keys.extend(keys)
        self._derived.clear()

    def set_vectors(self, rows: torch.Tensor, vectors: torch.Tensor) -> None:
        """Store (m, size) ``vectors`` at ``rows`` (m,)."""
        if self._vectors is None:
            self._vectors = torch.zeros(len(self._token_ids), vectors.shape[-1])
        self._vectors[rows] = vectors.float()
        self._has_vector[rows] = True
        self._derived.clear()

    def set_counts(self, rows: torch.Tensor, counts: torch.Tensor) -> None:
        self._counts[rows] = counts
        self._derived.clear()

    def remove(self, keys: Sequence[str]) -> None:
        """Forget ``keys``; the others keep their order. Removing the last rows added copies nothing."""
        drop = {self.row_of.pop(key) for key in keys}
        size = len(self)
        if drop == set(range(size - len(drop), size)):
            del self.keys[size - len(drop) :]
        else:
            keep = torch.tensor([row for row in range(size) if row not in drop], dtype=torch.long)
            self.keys = [self.keys[row] for row in keep.tolist()]
            for name in ("_token_ids", "_has_vector", "_counts", "_vectors"):
                buffer = getattr(self, name)
                if buffer is not None:
                    setattr(self, name, buffer[keep].clone())
            self.row_of = {key: row for row, key in enumerate(self.keys)}
        self._derived.clear()

    def derived(self, name: str, build):
        """``build(self)``, kept until the table next changes (the centre, the popularity buckets)."""
        if name not in self._derived:
            self._derived[name] = build(self)
        return self._derived[name]


def _strings_to_tensors(strings: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Strings -> (their UTF-8 bytes joined, uint8) and (the end offset of each, int64): strings as tensors."""
    encoded = [text.encode("utf-8") for text in strings]
    joined = b"".join(encoded)
    ends = torch.tensor([len(chunk) for chunk in encoded], dtype=torch.long).cumsum(0)
    data = torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined else torch.zeros(0, dtype=torch.uint8)
    return data, ends


def _tensors_to_strings(data: torch.Tensor, ends: torch.Tensor) -> list[str]:
    joined = data.numpy().tobytes()
    starts = [0, *ends.tolist()]
    return [joined[start:end].decode("utf-8") for start, end in zip(starts[:-1], starts[1:])]


def save_items(
    path: str,
    keys: Sequence[str],
    codes: torch.Tensor,
    texts: Sequence[str],
    counts: torch.Tensor,
    vectors: torch.Tensor | None,
    has_vector: torch.Tensor,
    alignments: dict[str, dict[str, torch.Tensor]],
) -> None:
    """Write the whole item state to one safetensors file at ``path`` (the caller renames it into place).

    keys, texts (N,); codes (N, tokens_per_item); counts (N,) with ``NO_COUNT``; vectors (N, size) saved as float16,
    has_vector (N,); alignments: domain -> ``{"mean": (dim,), "rotation": (dim, dim)}``."""
    key_bytes, key_ends = _strings_to_tensors(keys)
    text_bytes, text_ends = _strings_to_tensors(texts)
    tensors = {
        "key_bytes": key_bytes,
        "key_ends": key_ends,
        "text_bytes": text_bytes,
        "text_ends": text_ends,
        "codes": codes.to(torch.int32).contiguous(),
        "counts": counts.to(torch.long).contiguous(),
        "has_vector": has_vector.to(torch.uint8).contiguous(),
    }
    if vectors is not None:
        tensors["vectors"] = vectors.half().contiguous()
    domains = sorted(alignments)
    for index, domain in enumerate(domains):
        for part in ("mean", "rotation"):
            tensors[f"alignment.{index}.{part}"] = alignments[domain][part].float().contiguous()
    # One metadata entry: safetensors writes several in an order that changes from process to process.
    safe_save_file(
        tensors, path, metadata={METADATA_KEY: json.dumps({"format": ITEMS_FORMAT, "alignment_domains": domains})}
    )


def load_items(path: str | os.PathLike) -> dict:
    """What ``save_items`` wrote: ``{"keys", "codes", "texts", "counts", "vectors", "has_vector", "alignments"}``."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
            if metadata.get("format") != ITEMS_FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}, expected {ITEMS_FORMAT!r}")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        domains = metadata["alignment_domains"]
        return {
            "keys": _tensors_to_strings(tensors["key_bytes"], tensors["key_ends"]),
            "texts": _tensors_to_strings(tensors["text_bytes"], tensors["text_ends"]),
            "codes": tensors["codes"].long(),
            "counts": tensors["counts"],
            "vectors": tensors["vectors"].float() if "vectors" in tensors else None,
            "has_vector": tensors["has_vector"].bool(),
            "alignments": {
                domain: {part: tensors[f"alignment.{index}.{part}"] for part in ("mean", "rotation")}
                for index, domain in enumerate(domains)
            },
        }
    except Exception as error:
        raise ValueError(
            f"{path}: not a RecBase items file ({type(error).__name__}: {error}); the folder was saved incompletely "
            "or damaged: save it again or copy the whole folder"
        ) from error


__all__ = ["NO_COUNT", "DomainItems", "group_by_domain", "load_items", "save_items"]
