"""RecBase configuration: the concept-token vocabulary, a Qwen2-style decoder and the heads on top of it.

The defaults are the model the main job trains (``python -m training.main``): 3 x 256 codes + 32 disambiguation
codes, the dense head and content inputs over 384-number item vectors, 10 popularity buckets. How a model ranks
(which heads score which domains, with what weights) is not architecture: it is the ``RankingPolicy`` saved
beside the weights (``ranking_config.json``, ``ranking_recbase.py``).

Shipped beside the weights: imports only the standard library, transformers and same-folder files.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .vocabulary_recbase import VocabularyLayout

# Named sizes. "recbase-1.5b" is the paper's scale: 1.50e9 parameters with the paper's vocabulary of 4 x 1024
# codes (Qwen2-1.5B's width and MLP, 32 layers because the item vocabulary is tiny next to a text one).
PRESETS: dict[str, dict[str, int]] = {
    "recbase-tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=1024,
    ),
    "recbase-small": dict(
        hidden_size=384,
        num_hidden_layers=8,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=1024,
        max_position_embeddings=1024,
    ),
    "recbase-1.5b": dict(
        hidden_size=1536,
        num_hidden_layers=32,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        max_position_embeddings=4096,
    ),
}


class RecBaseConfig(PretrainedConfig):
    """Configuration of a RecBase decoder over hierarchical concept IDs.

    Vocabulary layout (``vocabulary_recbase.VocabularyLayout``, the item tokenizer's): ``<pad> <bos> <eos>``, then
    ``codebook_sizes[0]`` codes of level 1, ..., then ``disambiguation_size`` codes of the extra level that makes
    every item's ID unique (0 = no such level). An item is ``len(codebook_sizes) + (disambiguation_size > 0)``
    tokens long.

    Args:
        codebook_sizes: codes per hierarchical level, coarse to fine (the paper: 4 x 1024).
        disambiguation_size: codes of the extra last level; 0 disables it.
        vocab_size: defaults to the size the layout needs; a larger value pads the embedding.
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size,
        rope_theta, rms_norm_eps, max_position_embeddings, attention_bias, attention_dropout,
        initializer_range, tie_word_embeddings: the decoder, as in Qwen2.
        max_history_items: the most recent items of a history the model reads, in training windows, in
            evaluation and in the pipeline (a longer history is cut from the left); at most what the context
            holds.
        embedding_dropout, residual_dropout: dropout on the input embeddings and on each block's output
            before it joins the residual stream (training only).
        latent_dim: size of the item tokenizer's quantized latent; > 0 gives the model a frozen table of the
            quantizer's code vectors (``code_latents``, one row per concept token), from which an item's
            content vector (the sum of its codes' vectors) is computed. Nothing is stored per item.
        item_vector_size: size of the content vectors the dense head predicts and scores (the item tokenizer's
            ``item_vectors``: each item's aligned text embedding); 0 means ``latent_dim``, where the sum of an
            item's code vectors can stand in for a vector that was not given.
        content_inputs: add a learned projection (zero at init) of each code token's vector to its input
            embedding, so a code never seen in a role still carries its meaning into the model.
        dense_head: a second head (zero at init) that predicts the next item's content vector as a residual
            on the prior (below); candidates are scored by cosine (the LIGER idea).
        dense_temperature: the cosine is divided by it, in training and in scoring.
        dense_history_items, dense_history_decay: the dense head's prior is the sum of the unit content vectors
            of the last ``dense_history_items`` items, the item k steps back weighted ``dense_history_decay ** k``
            (1 and any decay: the last item alone).
        dense_loss_weight: weight of the dense head's loss (a softmax over the true next item and sampled
            items of the same domain) next to the code tokens' cross-entropy.
        popularity_buckets: > 0 enables the "catalogue counts" setting: an item whose interaction count is
            known falls in one of this many within-domain popularity buckets, each with a learned score
            bias; items without counts get none.
    """

    model_type = "recbase"
    _auto_class = "AutoConfig"  # save_pretrained copies this file and writes auto_map (remote code)
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        codebook_sizes: list[int] | tuple[int, ...] = (256, 256, 256),
        disambiguation_size: int = 32,
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
        max_history_items: int = 20,
        embedding_dropout: float = 0.0,
        residual_dropout: float = 0.0,
        latent_dim: int = 64,
        item_vector_size: int = 384,
        content_inputs: bool = True,
        dense_head: bool = True,
        dense_temperature: float = 0.1,
        dense_history_items: int = 10,
        dense_history_decay: float = 0.5,
        dense_loss_weight: float = 1.0,
        popularity_buckets: int = 10,
        **kwargs,
    ) -> None:
        self.codebook_sizes = [int(size) for size in codebook_sizes]  # JSON-friendly: a list, not a tuple
        self.disambiguation_size = int(disambiguation_size)
        if not self.codebook_sizes or min(self.codebook_sizes) < 1 or self.disambiguation_size < 0:
            raise ValueError(
                f"codebook_sizes must be a non-empty list of positive sizes and disambiguation_size >= 0, "
                f"got {self.codebook_sizes} and {self.disambiguation_size}"
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
        if (content_inputs or dense_head) and latent_dim <= 0:
            raise ValueError("content_inputs and dense_head need latent_dim > 0 (the quantizer's latent size)")
        if popularity_buckets and not dense_head:
            raise ValueError("popularity_buckets biases the dense head's scores: set dense_head=True")
        self.max_history_items = int(max_history_items)
        self.embedding_dropout = embedding_dropout
        self.residual_dropout = residual_dropout
        self.latent_dim = int(latent_dim)
        self.item_vector_size = int(item_vector_size) or self.latent_dim
        self.content_inputs = bool(content_inputs)
        self.dense_head = bool(dense_head)
        self.dense_temperature = float(dense_temperature)
        self.dense_history_items = int(dense_history_items)
        self.dense_history_decay = float(dense_history_decay)
        self.dense_loss_weight = float(dense_loss_weight)
        self.popularity_buckets = int(popularity_buckets)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        # After the base class has set the special token ids, which the layout starts with.
        needed_vocab = self.layout.size
        self.vocab_size = needed_vocab if vocab_size is None else int(vocab_size)
        if self.vocab_size < needed_vocab:
            raise ValueError(
                f"vocab_size={self.vocab_size} is smaller than the {needed_vocab} tokens that "
                f"codebook_sizes={self.codebook_sizes} and disambiguation_size={self.disambiguation_size} need"
            )

    @property
    def layout(self) -> VocabularyLayout:
        """The vocabulary layout: the special tokens take ids 0 to the largest of ``pad_token_id``,
        ``bos_token_id`` and ``eos_token_id``, then every level's codes, then the disambiguation codes."""
        special = max(self.pad_token_id, self.bos_token_id, self.eos_token_id) + 1
        return VocabularyLayout(tuple(self.codebook_sizes), self.disambiguation_size, special)

    @property
    def tokens_per_item(self) -> int:
        """Number of concept tokens that spell one item."""
        return self.layout.tokens_per_item

    @classmethod
    def from_preset(cls, name: str, **overrides) -> RecBaseConfig:
        """Build a named size (``recbase-tiny``, ``recbase-small``, ``recbase-1.5b``); ``overrides`` win."""
        if name not in PRESETS:
            raise ValueError(f"unknown RecBase preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["PRESETS", "RecBaseConfig"]
