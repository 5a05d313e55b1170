"""RecBase's vocabulary layout and item keys: the one definition the tokenizer, the model and training share.

Token ids: ``<pad> <bos> <eos>`` (0, 1, 2), then each level's codes in order (level letters a, b, ...), then the
disambiguation codes (letter z). An item is one code per level, disambiguation last, so its last token is one of
the layout's last ``last_level_size`` ids: that is how a token sequence shows where each item ends.

An item key is ``"<domain>/<item_id>"``; the domain never holds "/", the item id may.

Shipped beside the weights (with the tokenizer, and with the model through the identical file
``modeling_recbase/vocabulary_recbase.py``, a link to this one): imports only torch and the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxy"
DISAMBIGUATION_LETTER = "z"
KEY_SEPARATOR = "/"


def item_domain(key: str) -> str:
    """The domain of an item key ``"<domain>/<item_id>"``."""
    return key.split(KEY_SEPARATOR, 1)[0]


def item_key(domain: str, item_id: str) -> str:
    """The key of item ``item_id`` of ``domain``."""
    return f"{domain}{KEY_SEPARATOR}{item_id}"


def is_item_key(key: object) -> bool:
    """Whether ``key`` is a string of the form ``"<domain>/<item_id>"`` with both parts non-empty."""
    return isinstance(key, str) and all(key.partition(KEY_SEPARATOR)[::2])


def recent_items(history: Sequence, max_items: int | None) -> list:
    """The most recent ``max_items`` entries of a history (all of them when ``max_items`` is None)."""
    return list(history if max_items is None or len(history) <= max_items else history[-max_items:])


@dataclass(frozen=True)
class VocabularyLayout:
    """Where each level's codes sit among the token ids.

    Args:
        codebook_sizes: codes per hierarchical level, coarse to fine.
        disambiguation_size: codes of the extra last level that makes every ID unique (0: no such level).
        num_special_tokens: ids before the first code (the special tokens).
    """

    codebook_sizes: tuple[int, ...]
    disambiguation_size: int
    num_special_tokens: int = len(SPECIAL_TOKENS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codebook_sizes", tuple(int(size) for size in self.codebook_sizes))
        if not 0 < len(self.codebook_sizes) <= len(LEVEL_LETTERS):
            raise ValueError(
                f"between 1 and {len(LEVEL_LETTERS)} code levels are supported, got {len(self.codebook_sizes)}"
            )
        if min(self.codebook_sizes) < 1 or self.disambiguation_size < 0:
            raise ValueError(
                f"codebook_sizes must be positive and disambiguation_size >= 0, "
                f"got {list(self.codebook_sizes)} and {self.disambiguation_size}"
            )

    @cached_property
    def level_sizes(self) -> tuple[int, ...]:
        """Codes of each of an item's tokens (the disambiguation level last, when there is one)."""
        return self.codebook_sizes + ((self.disambiguation_size,) if self.disambiguation_size else ())

    @cached_property
    def level_offsets(self) -> tuple[int, ...]:
        """Token id of code 0 of each level."""
        sizes = self.level_sizes
        return tuple(self.num_special_tokens + sum(sizes[:level]) for level in range(len(sizes)))

    @property
    def tokens_per_item(self) -> int:
        return len(self.level_sizes)

    @property
    def size(self) -> int:
        """Token ids the layout uses."""
        return self.num_special_tokens + sum(self.level_sizes)

    @property
    def first_item_end_id(self) -> int:
        """The smallest id of an item's last token: ids from here to ``size`` end an item."""
        return self.size - self.level_sizes[-1]

    def is_item_end(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Bool tensor like ``token_ids``: True where a token is an item's last."""
        return token_ids >= self.first_item_end_id

    def tokens(self) -> list[str]:
        """Every token, in id order: ``<pad> <bos> <eos> <a_0> ... <b_0> ... <z_0> ...``."""
        tokens = list(SPECIAL_TOKENS[: self.num_special_tokens])
        for letter, size in zip(LEVEL_LETTERS, self.codebook_sizes):
            tokens += [f"<{letter}_{code}>" for code in range(size)]
        return tokens + [f"<{DISAMBIGUATION_LETTER}_{code}>" for code in range(self.disambiguation_size)]

    def token_ids(self, codes: Sequence[int]) -> list[int]:
        """An item's codes (one per level) -> its token ids."""
        return [offset + code for offset, code in zip(self.level_offsets, codes)]

    def codes(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        """One item's token ids -> its codes."""
        return tuple(token - offset for token, offset in zip(token_ids, self.level_offsets))

    def fits(self, codes: Sequence[int]) -> bool:
        """Whether ``codes`` are one valid code per level."""
        return len(codes) == self.tokens_per_item and all(0 <= c < n for c, n in zip(codes, self.level_sizes))


__all__ = [
    "DISAMBIGUATION_LETTER",
    "KEY_SEPARATOR",
    "LEVEL_LETTERS",
    "SPECIAL_TOKENS",
    "VocabularyLayout",
    "is_item_key",
    "item_domain",
    "item_key",
    "recent_items",
]
