"""RecBase item tokenizer package.

Importing it registers ``RecBaseTokenizer`` with ``AutoTokenizer`` for RecBase configs, so an installed
user needs no ``trust_remote_code``.
"""

from transformers import AutoTokenizer

from modeling_recbase import RecBaseConfig

from .tokenization_recbase import (
    DEFAULT_TEXT_ENCODER,
    RecBaseTokenizer,
    ResidualQuantizer,
    TextEncoder,
    align,
    assign_unique_codes,
    check_model_config,
    fit_domain_alignment,
    load_quantizer,
    unified_item_text,
)

AutoTokenizer.register(RecBaseConfig, slow_tokenizer_class=RecBaseTokenizer, exist_ok=True)

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "RecBaseTokenizer",
    "ResidualQuantizer",
    "TextEncoder",
    "align",
    "assign_unique_codes",
    "check_model_config",
    "unified_item_text",
    "fit_domain_alignment",
    "load_quantizer",
]
