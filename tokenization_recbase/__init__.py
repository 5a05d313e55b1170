"""RecBase item tokenizer package.

Importing it registers ``RecBaseTokenizer`` with ``AutoTokenizer`` for RecBase configs, so an installed
user needs no ``trust_remote_code``.
"""

from transformers import AutoTokenizer

from modeling_recbase import RecBaseConfig

from .quantization_recbase import (
    SPECIAL_TOKENS,
    ResidualQuantizer,
    align,
    align_by_domain,
    assign_unique_codes,
    fit_domain_alignment,
    load_quantizer,
)
from .item_text_recbase import DEFAULT_TEXT_ENCODER, TextEncoder, unified_item_text
from .tokenization_recbase import RecBaseTokenizer, check_model_config

AutoTokenizer.register(RecBaseConfig, slow_tokenizer_class=RecBaseTokenizer, exist_ok=True)

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "SPECIAL_TOKENS",
    "RecBaseTokenizer",
    "ResidualQuantizer",
    "TextEncoder",
    "align",
    "align_by_domain",
    "assign_unique_codes",
    "check_model_config",
    "fit_domain_alignment",
    "load_quantizer",
    "unified_item_text",
]
