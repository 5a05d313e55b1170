"""RecBase item tokenizer: items of every domain as hierarchical concept IDs from one shared vocabulary.

An item's ID is ``len(codebook_sizes)`` codes from a residual quantizer (coarse to fine) plus, when
``disambiguation_size > 0``, one extra code that makes every ID unique. Each (level, code) is one token:
``<a_12>`` is code 12 of level 1, ``<b_3>`` code 3 of level 2, ..., and ``<z_0>`` the disambiguation code.

The tokenizer holds the item table (key ``"<domain>/<item_id>"`` -> codes, text), the frozen quantizer and
each domain's alignment (its embeddings centred and rotated onto its principal axes, so that all domains
share the coarse codes), so new items, even a whole new domain, get IDs with no retraining (``add_items``).

The vocabulary layout and item keys are in ``vocabulary_recbase``, the quantizer, alignment and unique IDs in
``quantization_recbase``, the per-domain item tables and their file in ``item_store_recbase``; item text and
its encoder in ``item_text_recbase``. Shipped beside the weights: imports only torch, transformers, the standard
library and those siblings.
"""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import BatchEncoding, PreTrainedTokenizer
from transformers.tokenization_utils_base import TOKENIZER_CONFIG_FILE

from .embedding_cache_recbase import EmbeddingCache
from .item_indexing_recbase import ItemIndexingMixin
from .item_signals_recbase import ItemSignalsMixin
from .item_store_recbase import NO_COUNT, DomainItems, group_by_domain, load_items, save_items
from .item_text_recbase import (
    DEFAULT_TEXT_ENCODER,
    ITEM_TEXT_FIELD_LIMITS,
    ITEM_TEXT_MAX_CATEGORIES,
    TEXT_MAX_LENGTH,
    TextEncoder,
)
from .quantization_recbase import ResidualQuantizer, load_quantizer, save_quantizer
from .saving_recbase import save_through_staging, write_atomically
from .vocabulary_recbase import SPECIAL_TOKENS, VocabularyLayout, item_domain, recent_items

TOKEN_PATTERN = re.compile("|".join([r"<[a-z]_\d+>", *map(re.escape, SPECIAL_TOKENS)]))


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def check_model_config(tokenizer, config, where: str) -> None:
    """Raise a ValueError naming ``where`` unless the model ``config`` has the ``tokenizer``'s concept vocabulary.
    A function as well as a method: training code checks folders whose shipped tokenizer may predate it."""
    special_ids = ("pad_token_id", "bos_token_id", "eos_token_id")
    if (
        config.layout.level_offsets != tokenizer.layout.level_offsets
        or config.layout.level_sizes != tokenizer.layout.level_sizes
        or config.vocab_size < len(tokenizer)
        or any(getattr(config, name) != getattr(tokenizer, name) for name in special_ids)
    ):
        raise ValueError(
            f"{where}: the tokenizer (codebooks {tokenizer.codebook_sizes}, disambiguation "
            f"{tokenizer.disambiguation_size}, {len(tokenizer)} tokens) does not match the model (codebooks "
            f"{config.codebook_sizes}, disambiguation {config.disambiguation_size}, vocab_size {config.vocab_size}); "
            f"special token ids: tokenizer {[getattr(tokenizer, name) for name in special_ids]}, model "
            f"{[getattr(config, name) for name in special_ids]}"
        )
    wanted = getattr(config, "item_vector_size", 0) if getattr(config, "dense_head", False) else 0
    if wanted and tokenizer.item_codes and tokenizer.item_vector_size != wanted:
        held = tokenizer.item_vector_size
        raise ValueError(
            f"{where}: the model's dense head scores {wanted}-number item vectors, but the tokenizer "
            + (
                f"holds {held}-number ones"
                if tokenizer._vector_size
                else f"has none: its {tokenizer.vocab_files_names['items_file']} holds no item vectors (copy the "
                "whole saved folder, or index the items again with add_items)"
            )
        )


class RecBaseTokenizer(ItemIndexingMixin, ItemSignalsMixin, PreTrainedTokenizer):
    """Items <-> concept tokens. See the module docstring for the ID layout.

    Args:
        items_file: every item (key, codes, text, count, content vector) and each domain's alignment, one safetensors
            file written by ``save_pretrained`` (``item_store_recbase``).
        quantizer_file: the frozen quantizer (safetensors: weights, config in its metadata), used by ``add_items``.
        item_table_file, legacy_quantizer_file, item_vectors_file: a previous release's files (``item_table.json``,
            ``quantizer.pt``, ``item_vectors.pt``), read when ``items_file`` is absent; the next save writes the
            new files and removes these.
        codebook_sizes: codes per level.
        disambiguation_size: codes of the extra level (0 = none).
        text_encoder: the encoder that embeds item texts for ``add_items`` (a folder or a model package name).
    """

    _auto_class = "AutoTokenizer"  # what register_for_auto_class() sets: save_pretrained ships this file
    vocab_files_names = {
        "items_file": "items.safetensors",
        "quantizer_file": "quantizer.safetensors",
        "item_table_file": "item_table.json",
        "legacy_quantizer_file": "quantizer.pt",
        "item_vectors_file": "item_vectors.pt",
    }
    legacy_files = ("item_table_file", "legacy_quantizer_file", "item_vectors_file")
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        items_file: str | None = None,
        quantizer_file: str | None = None,
        item_table_file: str | None = None,
        legacy_quantizer_file: str | None = None,
        item_vectors_file: str | None = None,
        codebook_sizes: Sequence[int] = (1024, 1024, 1024, 1024),
        disambiguation_size: int = 64,
        text_encoder: str = DEFAULT_TEXT_ENCODER,
        text_max_length: int = TEXT_MAX_LENGTH,
        item_text_field_limits: Mapping[str, int] | None = None,
        item_text_max_categories: int = ITEM_TEXT_MAX_CATEGORIES,
        **kwargs,
    ) -> None:
        self.codebook_sizes = [int(size) for size in codebook_sizes]
        self.disambiguation_size = int(disambiguation_size)
        self.text_encoder = text_encoder
        self.text_max_length = int(text_max_length)
        self.item_text_field_limits = dict(item_text_field_limits or ITEM_TEXT_FIELD_LIMITS)
        self.item_text_max_categories = int(item_text_max_categories)
        # The vocabulary must exist before the base __init__, which looks the special tokens up in it.
        self.layout = VocabularyLayout(tuple(self.codebook_sizes), self.disambiguation_size)
        tokens = self.layout.tokens()
        self._token_to_id = {token: index for index, token in enumerate(tokens)}
        self._id_to_token = tokens
        self._codes: dict[str, tuple[int, ...]] = {}
        self._texts: dict[str, str] = {}
        self._key_by_codes: dict[tuple[int, ...], str] = {}
        self._counts: dict[str, int] = {}  # catalogue counts (interactions per item), where the user gave them
        self._tables: dict[str, DomainItems] = {}  # per domain: what ranking reads, see item_store_recbase
        self._vector_size = 0  # size of the stored content vectors (0: none stored)
        self._quantizer: ResidualQuantizer | None = None
        self._alignments: dict[str, dict[str, torch.Tensor]] = {}
        self._encoder: TextEncoder | None = None
        self._embedding_cache: EmbeddingCache | None = None
        folder = kwargs.get("name_or_path")
        if folder and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, TOKENIZER_CONFIG_FILE)):
            raise ValueError(
                f"{folder}: {TOKENIZER_CONFIG_FILE} is missing, so the tokenizer's layout (codebooks, "
                "text encoder) is unknown; copy the whole saved folder"
            )
        if items_file is None and item_table_file is None and folder:  # from_pretrained of a folder without items
            raise ValueError(
                f"{folder}: {self.vocab_files_names['items_file']} is missing, so this "
                "RecBase tokenizer would know no items; copy the whole saved folder"
            )
        if quantizer_file is not None or legacy_quantizer_file is not None:
            self._quantizer, self._alignments = load_quantizer(quantizer_file or legacy_quantizer_file)
        if items_file is not None:
            self._load_items(items_file)
        else:  # a previous release's folder
            if item_table_file is not None:
                self._load_item_table(item_table_file)
            if item_vectors_file is not None:
                self._load_item_vectors(item_vectors_file)
        # Histories are left-padded so that generation continues them. Saved kwargs come back on reload, so
        # defaults go through kwargs rather than beside them.
        kwargs = {
            "padding_side": "left",
            **dict(zip(("pad_token", "bos_token", "eos_token"), SPECIAL_TOKENS)),
            **kwargs,
        }
        super().__init__(
            codebook_sizes=self.codebook_sizes,
            disambiguation_size=self.disambiguation_size,
            text_encoder=text_encoder,
            text_max_length=self.text_max_length,
            item_text_field_limits=self.item_text_field_limits,
            item_text_max_categories=self.item_text_max_categories,
            **kwargs,
        )

    # ----- the vocabulary (what PreTrainedTokenizer needs) -----
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._token_to_id)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        """``"<a_1><b_2>"`` -> ``["<a_1>", "<b_2>"]``; anything else in the text is an error."""
        tokens = TOKEN_PATTERN.findall(text)
        if "".join(tokens) != re.sub(r"\s+", "", text):
            raise ValueError(f"{text[:80]!r} is not a sequence of concept tokens like '<a_12><b_3>'")
        return tokens

    def _convert_token_to_id(self, token: str) -> int:
        if token not in self._token_to_id:
            raise ValueError(f"unknown concept token {token!r}")
        return self._token_to_id[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self._id_to_token[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        return [self.bos_token_id] + token_ids_0 + (token_ids_1 or [])

    # ----- items -----
    @property
    def tokens_per_item(self) -> int:
        return self.layout.tokens_per_item

    @property
    def item_codes(self) -> Mapping[str, tuple[int, ...]]:
        """Read-only mapping: item key -> its code tuple (one code per level, disambiguation last)."""
        return types.MappingProxyType(self._codes)

    def item_text(self, key: str) -> str:
        return self._texts[self._check_key(key)]

    def domain_items(self, domain: str) -> list[str]:
        """Keys of the items of one domain, in indexing order."""
        if domain not in self._tables:
            raise ValueError(f"no items of domain {domain!r} are indexed; known domains: {sorted(self.domains)}")
        return list(self._tables[domain].keys)

    def item_with_text(self, domain: str, text: str) -> str | None:
        """The key of an indexed item of ``domain`` whose text is ``text`` (the first indexed, where several share
        it), else None."""
        if domain not in self._tables:
            return None

        def by_text(table: DomainItems) -> dict[str, str]:
            first: dict[str, str] = {}
            for key in table.keys:
                first.setdefault(self._texts[key], key)
            return first

        return self._tables[domain].derived("by_text", by_text).get(text)

    @property
    def domains(self) -> set[str]:
        return set(self._tables)

    def codes_to_token_ids(self, codes: Sequence[int]) -> list[int]:
        return self.layout.token_ids(codes)

    def item_token_ids(self, keys: Sequence[str]) -> torch.LongTensor:
        """(len(keys), tokens_per_item) token ids, e.g. the allowed items for constrained decoding."""
        return self._gather(
            keys, lambda table: table.token_ids, torch.zeros(0, self.tokens_per_item, dtype=torch.long)
        )

    def positions(self, keys: Sequence[str]) -> Mapping[str, int]:
        """key -> its index in ``keys``; for a whole domain in indexing order, that domain's own index (no per-key
        work)."""
        whole = self._whole_domain(keys)
        if whole is not None:
            return types.MappingProxyType(whole.row_of)
        return {key: index for index, key in enumerate(keys)}

    def _whole_domain(self, keys: Sequence[str]) -> DomainItems | None:
        """The table whose keys, in indexing order, ``keys`` are (what ranking a domain asks for), else None: one
        comparison of key lists."""
        keys = keys if isinstance(keys, list) else list(keys)
        table = self._tables.get(item_domain(keys[0])) if keys and isinstance(keys[0], str) else None
        return table if table is not None and len(keys) == len(table) and keys == table.keys else None

    def _gather(self, keys: Sequence[str], column, empty: torch.Tensor) -> torch.Tensor:
        """Rows of a per-domain tensor for ``keys``: ``column(table)`` is (n, ...) for a domain's table of n items;
        the result is (len(keys), ...), ``empty`` when there are no keys. A whole domain in indexing order (what
        ranking a domain asks for) is one comparison of key lists and no per-key work."""
        keys = keys if isinstance(keys, list) else list(keys)
        if not keys:
            return empty
        whole = self._whole_domain(keys)
        if whole is not None:
            return column(whole)
        by_domain: dict[str, tuple[list[int], list[int]]] = {}
        for position, key in enumerate(keys):
            domain = item_domain(self._check_key(key))
            positions, rows = by_domain.setdefault(domain, ([], []))
            positions.append(position)
            rows.append(self._tables[domain].row_of[key])
        if len(by_domain) == 1:
            ((domain, (_, rows)),) = by_domain.items()
            return column(self._tables[domain])[torch.tensor(rows, dtype=torch.long)]
        gathered = None
        for domain, (positions, rows) in by_domain.items():
            values = column(self._tables[domain])[torch.tensor(rows, dtype=torch.long)]
            if gathered is None:
                gathered = values.new_empty(len(keys), *values.shape[1:])
            gathered[torch.tensor(positions, dtype=torch.long)] = values
        return gathered

    def encode_history(
        self,
        histories: Sequence[str] | Sequence[Sequence[str]],
        max_history_items: int | None = None,
        return_tensors: str | None = None,
        return_item_vectors: bool = False,
    ) -> BatchEncoding:
        """Item keys -> ``<bos>`` + each item's tokens. One history (a list of keys) or a batch (list of lists,
        left-padded). ``max_history_items`` keeps each history's most recent items. ``return_item_vectors`` (with
        ``return_tensors="pt"``) adds ``item_vectors`` (batch, seq, item_vector_size): each item's content vector at
        the position of its last token, zeros elsewhere (the model's dense head reads them)."""
        single = isinstance(histories, (list, tuple)) and bool(histories) and isinstance(histories[0], str)
        batch = [histories] if single else histories
        if (
            not isinstance(batch, (list, tuple))
            or not batch
            or not all(isinstance(history, (list, tuple)) and history for history in batch)
        ):
            raise ValueError("a history is a non-empty list of item keys, and a batch a non-empty list of histories")
        if max_history_items is not None and max_history_items < 1:
            raise ValueError(f"max_history_items must be at least 1, got {max_history_items}")
        sequences = []
        for history in batch:
            history = recent_items(history, max_history_items)
            ids = [token for key in history for token in self.codes_to_token_ids(self._codes[self._check_key(key)])]
            sequences.append(self.build_inputs_with_special_tokens(ids))
        width = max(map(len, sequences))
        encoded = {
            "input_ids": [[self.pad_token_id] * (width - len(s)) + s for s in sequences],
            "attention_mask": [[0] * (width - len(s)) + [1] * len(s) for s in sequences],
        }
        if single and return_tensors is None:
            encoded = {name: rows[0] for name, rows in encoded.items()}
        encoding = BatchEncoding(encoded, tensor_type=return_tensors)
        if return_item_vectors:
            if return_tensors != "pt":
                raise ValueError('return_item_vectors needs return_tensors="pt"')
            vectors = torch.zeros(len(batch), width, self.item_vector_size)
            for row, sequence in enumerate(sequences):
                items = (len(sequence) - 1) // self.tokens_per_item
                # Left padding: the last item ends at the last position, each earlier one tokens_per_item before.
                ends = [width - 1 - self.tokens_per_item * back for back in range(items)]
                vectors[row, ends] = self.item_vectors(batch[row][-items:][::-1])
            encoding["item_vectors"] = vectors
        return encoding

    def decode_items(self, token_ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Token ids (special tokens are skipped; a 2-D batch is read row by row) -> the item keys they spell."""
        ids = torch.as_tensor(token_ids).reshape(-1).tolist()
        outside = [i for i in ids if not 0 <= i < len(self._id_to_token)]
        if outside:
            raise ValueError(
                f"token ids {outside[:5]} are outside this tokenizer's vocabulary [0, {len(self._id_to_token)})"
            )
        ids = [i for i in ids if i >= self.layout.num_special_tokens]
        if len(ids) % self.tokens_per_item:
            raise ValueError(f"{len(ids)} concept tokens do not split into items of {self.tokens_per_item} tokens")
        keys = []
        for start in range(0, len(ids), self.tokens_per_item):
            codes = self.layout.codes(ids[start : start + self.tokens_per_item])
            if codes not in self._key_by_codes:
                raise ValueError(
                    f"tokens {self.convert_ids_to_tokens(ids[start : start + self.tokens_per_item])} "
                    "spell no indexed item"
                )
            keys.append(self._key_by_codes[codes])
        return keys

    def _check_key(self, key: str) -> str:
        if not isinstance(key, str) or key not in self._codes:
            raise ValueError(
                f"unknown item key {key!r} (keys look like '<domain>/<item_id>'; "
                f"{len(self._codes)} items of {sorted(self.domains)} are indexed)"
            )
        return key

    def set_items(self, codes: Mapping[str, Sequence[int]], texts: Mapping[str, str]) -> None:
        """Add items whose IDs are already decided (e.g. by fitting); IDs must be unique and in range. Every item is
        checked before any is added, so a refused call adds nothing."""
        new_ids: dict[tuple[int, ...], str] = {}
        for key, item_codes in codes.items():
            item_codes = tuple(int(c) for c in item_codes)
            if not self.layout.fits(item_codes):
                raise ValueError(
                    f"item {key!r}: codes {item_codes} do not fit the layout {list(self.layout.level_sizes)}"
                )
            if key in self._codes:
                raise ValueError(f"item {key!r} is already indexed")
            owner = self._key_by_codes.get(item_codes, new_ids.get(item_codes))
            if owner is not None:
                raise ValueError(f"item {key!r} would share the ID {item_codes} with {owner!r}")
            new_ids[item_codes] = key
        for item_codes, key in new_ids.items():
            self._codes[key] = item_codes
            self._key_by_codes[item_codes] = key
            self._texts[key] = texts.get(key, "")
        offsets = torch.tensor(self.layout.level_offsets, dtype=torch.long)
        for domain, keys in group_by_domain(codes).items():
            token_ids = torch.tensor([self._codes[key] for key in keys], dtype=torch.long) + offsets
            self._tables.setdefault(domain, DomainItems(self.tokens_per_item)).append(keys, token_ids)

    def remove_items(self, keys: Sequence[str]) -> None:
        """Forget indexed items (their IDs become free again); a domain left with no items forgets its alignment."""
        keys = list(dict.fromkeys(keys))
        for key in keys:
            self._key_by_codes.pop(self._codes.pop(self._check_key(key)))
            self._texts.pop(key)
            self._counts.pop(key, None)
        for domain, domain_keys in group_by_domain(keys).items():
            self._tables[domain].remove(domain_keys)
            if not len(self._tables[domain]):
                del self._tables[domain]
                self._alignments.pop(domain, None)

    def code_latent_table(self, vocab_size: int) -> torch.Tensor:
        """(vocab_size, latent_dim): the row of the token of code k of level l is the quantizer's
        ``codebooks[l][k]``; special and disambiguation tokens get zero rows. The sum of an item's rows is its
        quantized latent (what the model's ``code_latents`` hold)."""
        if self._quantizer is None:
            raise ValueError("this tokenizer has no quantizer, so it has no code vectors")
        table = torch.zeros(vocab_size, self._quantizer.config["latent_dim"])
        for offset, codebook in zip(self.layout.level_offsets, self._quantizer.codebooks):
            table[offset : offset + len(codebook)] = codebook.detach().float()
        return table

    def set_quantizer(self, quantizer: ResidualQuantizer, alignments: Mapping[str, dict[str, torch.Tensor]]) -> None:
        """The frozen quantizer and each known domain's alignment (``fit_domain_alignment``)."""
        if list(quantizer.config["codebook_sizes"]) != self.codebook_sizes:
            raise ValueError(
                f"quantizer codebooks {quantizer.config['codebook_sizes']} != tokenizer's {self.codebook_sizes}"
            )
        self._quantizer = quantizer.eval()
        self._alignments = dict(alignments)

    @property
    def quantizer(self) -> ResidualQuantizer | None:
        """The frozen quantizer that gives new items their codes (None for a tokenizer built without one)."""
        return self._quantizer

    @property
    def domain_alignments(self) -> Mapping[str, dict[str, torch.Tensor]]:
        """Read-only: domain -> its alignment (``fit_domain_alignment``), for every domain indexed so far."""
        return types.MappingProxyType(self._alignments)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedTokenizer.from_pretrained``; a folder whose JSON file is cut short or corrupt is named with the
        file, instead of a bare ``JSONDecodeError``."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except json.JSONDecodeError as error:
            folder = Path(str(pretrained_model_name_or_path))
            broken = [path.name for path in sorted(folder.glob("*.json")) if not _is_json(path)] or ["a JSON file"]
            raise ValueError(
                f"{folder}: {', '.join(broken)} is not valid JSON ({error}); the folder was saved incompletely or "
                "damaged: save it again or copy the whole folder"
            ) from error

    def save_pretrained(self, save_directory, *args, **kwargs) -> tuple[str, ...]:
        """``PreTrainedTokenizer.save_pretrained``, through a staging folder: a kill never leaves a file cut short,
        and the items (one file) are always those of one save (``saving_recbase``). A previous release's files there
        are removed once the new ones are in place."""
        paths = save_through_staging(
            save_directory, lambda staging: super(RecBaseTokenizer, self).save_pretrained(staging, *args, **kwargs)
        )
        prefix = f"{kwargs['filename_prefix']}-" if kwargs.get("filename_prefix") else ""
        for name in self.legacy_files:
            Path(save_directory, prefix + self.vocab_files_names[name]).unlink(missing_ok=True)
        return paths

    def check_model_config(self, config, where: str) -> None:
        """Raise a ValueError naming ``where`` unless a model ``config`` has this tokenizer's concept vocabulary."""
        check_model_config(self, config, where)

    # ----- files -----
    def _load_items(self, path: str) -> None:
        """Every item of a saved items file, at once: checks and tables over whole tensors, so a million items load
        in seconds (``set_items`` checks them one by one)."""
        state = load_items(path)
        keys, codes = state["keys"], state["codes"]
        sizes = torch.tensor(self.layout.level_sizes)
        if codes.shape != (len(keys), self.tokens_per_item) or bool(((codes < 0) | (codes >= sizes)).any()):
            raise ValueError(f"{path}: item codes do not fit the layout {list(self.layout.level_sizes)}")
        code_tuples = list(map(tuple, codes.tolist()))
        self._codes = dict(zip(keys, code_tuples))
        self._key_by_codes = dict(zip(code_tuples, keys))
        if not len(self._codes) == len(self._key_by_codes) == len(keys):
            raise ValueError(
                f"{path}: {len(keys)} items but {len(self._codes)} distinct keys and "
                f"{len(self._key_by_codes)} distinct IDs"
            )
        self._texts = dict(zip(keys, state["texts"]))
        counts, vectors, has_vector = state["counts"], state["vectors"], state["has_vector"]
        counted = (counts != NO_COUNT).nonzero().squeeze(-1).tolist()
        self._counts = {keys[row]: count for row, count in zip(counted, counts[counted].tolist())}
        self._vector_size = vectors.shape[-1] if vectors is not None and bool(has_vector.any()) else 0
        token_ids = codes + torch.tensor(self.layout.level_offsets, dtype=torch.long)
        # The file holds each domain's items together (see save_vocabulary): one table per run of a domain.
        domains = [item_domain(key) for key in keys]
        start = 0
        for end in range(1, len(keys) + 1):
            if end == len(keys) or domains[end] != domains[start]:
                if domains[start] in self._tables:
                    raise ValueError(f"{path}: the items of domain {domains[start]!r} are not stored together")
                self._tables[domains[start]] = DomainItems.from_rows(
                    keys[start:end],
                    token_ids[start:end],
                    vectors[start:end] if self._vector_size else None,
                    has_vector[start:end],
                    counts[start:end],
                )
                start = end
        self._alignments = state["alignments"]

    def _load_item_table(self, path: str) -> None:
        try:
            table = json.loads(Path(path).read_text(encoding="utf-8"))["items"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not a RecBase item table ({error})") from error
        self.set_items(
            {key: item["codes"] for key, item in table.items()},
            {key: item.get("text", "") for key, item in table.items()},
        )
        self.set_item_counts({key: item["count"] for key, item in table.items() if "count" in item})

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write every item and each domain's alignment to one file, and the quantizer to another (each atomically:
        temp file, then rename), so a folder never mixes two saves."""
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        tables = list(self._tables.values())
        offsets = torch.tensor(self.layout.level_offsets, dtype=torch.long)

        def column(part, width: tuple[int, ...] = (), dtype=torch.long) -> torch.Tensor:
            """``part(table)`` of every table, one after another (the file keeps each domain's items together)."""
            return torch.cat([part(table) for table in tables]) if tables else torch.zeros(0, *width, dtype=dtype)

        size = self._vector_size
        items_path = os.path.join(save_directory, prefix + self.vocab_files_names["items_file"])
        write_atomically(
            items_path,
            lambda path: save_items(
                path,
                [key for table in tables for key in table.keys],
                column(lambda table: table.token_ids - offsets, (self.tokens_per_item,)),
                [self._texts[key] for table in tables for key in table.keys],
                column(lambda table: table.counts),
                column(
                    lambda table: table.vectors if table.vectors is not None else torch.zeros(len(table), size),
                    (size,),
                    torch.float32,
                )
                if size
                else None,
                column(lambda table: table.has_vector, dtype=torch.bool),
                self._alignments,
            ),
        )
        paths = [items_path]
        if self._quantizer is not None:
            quantizer_path = os.path.join(save_directory, prefix + self.vocab_files_names["quantizer_file"])
            write_atomically(quantizer_path, lambda path: save_quantizer(self._quantizer, path))
            paths.append(quantizer_path)
        return tuple(paths)


__all__ = ["RecBaseTokenizer", "check_model_config"]
