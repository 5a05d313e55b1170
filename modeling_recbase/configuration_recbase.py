"""RecBase configuration: the concept-token vocabulary layout and a Qwen2-style decoder.

Shipped beside the weights: imports only the standard library and transformers.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# Token ids 0..2 are reserved in every RecBase vocabulary; the item tokenizer uses the same order.
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")

# Named sizes. "recbase-1.5b" is the paper's scale: 1.50e9 parameters with the default vocabulary
# (Qwen2-1.5B's width and MLP, 32 layers because the item vocabulary is tiny next to a text one).
PRESETS: dict[str, dict[str, int]] = {
    "recbase-tiny": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=512, max_position_embeddings=1024,
    ),
    "recbase-small": dict(
        hidden_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=1024, max_position_embeddings=1024,
    ),
    "recbase-1.5b": dict(
        hidden_size=1536, num_hidden_layers=32, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960, max_position_embeddings=4096,
    ),
}


class RecBaseConfig(PretrainedConfig):
    """Configuration of a RecBase decoder over hierarchical concept IDs.

    Vocabulary layout (ids): ``<pad> <bos> <eos>``, then ``codebook_sizes[0]`` codes of level 1, ...,
    then ``disambiguation_size`` codes of the extra level that makes every item's ID unique (0 = no
    such level). An item is ``len(codebook_sizes) + (disambiguation_size > 0)`` tokens long.

    Args:
        codebook_sizes: codes per hierarchical level, coarse to fine (the paper: 4 x 1024).
        disambiguation_size: codes of the extra last level; 0 disables it.
        vocab_size: defaults to the size the layout needs; a larger value pads the embedding.
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size,
        rope_theta, rms_norm_eps, max_position_embeddings, attention_bias, attention_dropout,
        initializer_range, tie_word_embeddings: the decoder, as in Qwen2.
    """

    model_type = "recbase"
    _auto_class = "AutoConfig"  # save_pretrained copies this file and writes auto_map (remote code)
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        codebook_sizes: list[int] | tuple[int, ...] = (1024, 1024, 1024, 1024),
        disambiguation_size: int = 64,
        vocab_size: int | None = None,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        intermediate_size: int = 512,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        max_position_embeddings: int = 1024,
        attention_bias: bool = True,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        self.codebook_sizes = [int(size) for size in codebook_sizes]  # JSON-friendly: a list, not a tuple
        self.disambiguation_size = int(disambiguation_size)
        if not self.codebook_sizes or min(self.codebook_sizes) < 1 or self.disambiguation_size < 0:
            raise ValueError(
                f"codebook_sizes must be a non-empty list of positive sizes and disambiguation_size >= 0, "
                f"got {self.codebook_sizes} and {self.disambiguation_size}"
            )
        needed_vocab = len(SPECIAL_TOKENS) + sum(self.codebook_sizes) + self.disambiguation_size
        self.vocab_size = needed_vocab if vocab_size is None else int(vocab_size)
        if self.vocab_size < needed_vocab:
            raise ValueError(
                f"vocab_size={self.vocab_size} is smaller than the {needed_vocab} tokens that "
                f"codebook_sizes={self.codebook_sizes} and disambiguation_size={self.disambiguation_size} need"
            )
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_attention_heads}"
            )
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={num_attention_heads} is not divisible by "
                f"num_key_value_heads={num_key_value_heads}"
            )
        if (hidden_size // num_attention_heads) % 2:
            raise ValueError(f"the head size {hidden_size // num_attention_heads} must be even for rotary positions")
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.rope_theta = float(rope_theta)
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def tokens_per_item(self) -> int:
        """Number of concept tokens that spell one item."""
        return len(self.codebook_sizes) + (self.disambiguation_size > 0)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "RecBaseConfig":
        """Build a named size (``recbase-tiny``, ``recbase-small``, ``recbase-1.5b``); ``overrides`` win."""
        if name not in PRESETS:
            raise ValueError(f"unknown RecBase preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["RecBaseConfig", "PRESETS", "SPECIAL_TOKENS"]
