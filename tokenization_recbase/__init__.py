"""RecBase item tokenizer package.

Importing it registers ``RecBaseTokenizer`` with ``AutoTokenizer`` for RecBase configs, so an installed
user needs no ``trust_remote_code``.
"""

from transformers import AutoTokenizer

from modeling_recbase import RecBaseConfig

from .item_text_recbase import DEFAULT_TEXT_ENCODER, ITEM_FIELDS, TextEncoder, split_categories, unified_item_text
from .quantization_recbase import (
    ResidualQuantizer,
    align,
    align_by_domain,
    assign_unique_codes,
    fit_domain_alignment,
    load_quantizer,
)
from .tokenization_recbase import RecBaseTokenizer, check_model_config
from .vocabulary_recbase import SPECIAL_TOKENS, VocabularyLayout, is_item_key, item_domain, item_key, recent_items

AutoTokenizer.register(RecBaseConfig, slow_tokenizer_class=RecBaseTokenizer, exist_ok=True)

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "ITEM_FIELDS",
    "SPECIAL_TOKENS",
    "RecBaseTokenizer",
    "ResidualQuantizer",
    "TextEncoder",
    "VocabularyLayout",
    "align",
    "align_by_domain",
    "assign_unique_codes",
    "check_model_config",
    "fit_domain_alignment",
    "is_item_key",
    "item_domain",
    "item_key",
    "load_quantizer",
    "recent_items",
    "split_categories",
    "unified_item_text",
]
