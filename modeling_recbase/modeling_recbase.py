"""RecBase: a decoder-only transformer over hierarchical concept IDs of items (RecBase, EMNLP 2025), with its heads.

The decoder follows Qwen2 (RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP) with the same
submodule names, so PEFT target modules, ``device_map`` and ``resize_token_embeddings`` work unchanged.
A user's history is the concatenation of its items' code tokens. Two heads read the decoder's last hidden state:
the code head (next-token prediction over concept tokens) and the dense head (the next item's content vector, a
learned residual on a training-free prior). Which of them ranks which domain is the model's ``ranking_policy``
(``ranking_recbase``); constrained decoding over real items' IDs is in ``generation_recbase``.

Shipped beside the weights: imports only torch, transformers, the standard library and same-folder files.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_recbase import RecBaseConfig
from .dense_head_recbase import RecBaseDenseHeadMixin
from .generation_recbase import CACHE_FIELD
from .hub_recbase import RecBaseHubMixin, hub_entry_points
from .ranking_recbase import RankingPolicy


class RecBaseRMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 (as Qwen2/T5)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class RecBaseRotaryEmbedding(nn.Module):
    """Rotary position embedding: cos/sin tables for given positions."""

    def __init__(self, config: RecBaseConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", self.inverse_frequencies(config), persistent=False)

    @staticmethod
    def inverse_frequencies(config: RecBaseConfig) -> torch.Tensor:
        """(head_dim // 2,) rotation speeds, theta ** (-2i / head_dim)."""
        head_dim = config.hidden_size // config.num_attention_heads
        return 1.0 / (config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))

    @torch.no_grad()
    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (batch, seq) -> cos, sin, each (batch, seq, head_dim)."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(hidden_states.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(hidden_states.dtype), emb.sin().to(hidden_states.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (batch, heads, seq, head_dim), k (batch, kv_heads, seq, head_dim); cos/sin (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class RecBaseAttention(nn.Module):
    """Grouped-query self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, config: RecBaseConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """hidden_states (batch, seq, hidden); attention_mask None (plain causal) or bool (batch, 1, seq, kv_len)."""
        batch, seq, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, seq, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (batch, kv_heads, kv_len, head_dim)
        attn = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            # Without a mask the kernel's own causal path is the fast one; it is only valid when the queries
            # are the whole sequence (no cache), since is_causal aligns the mask to the top-left corner.
            is_causal=attention_mask is None and seq > 1,
            enable_gqa=self.num_key_value_heads != self.num_heads,
        )  # (batch, heads, seq, head_dim)
        return self.o_proj(attn.transpose(1, 2).reshape(batch, seq, -1))


class RecBaseMLP(nn.Module):
    """SwiGLU feed-forward block."""

    def __init__(self, config: RecBaseConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class RecBaseDecoderLayer(nn.Module):
    """Pre-norm transformer block: attention then MLP, each with a residual connection."""

    def __init__(self, config: RecBaseConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = RecBaseAttention(config, layer_idx)
        self.mlp = RecBaseMLP(config)
        self.input_layernorm = RecBaseRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RecBaseRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.residual_dropout(
            self.self_attn(self.input_layernorm(hidden_states), position_embeddings, attention_mask, cache)
        )
        return hidden_states + self.residual_dropout(self.mlp(self.post_attention_layernorm(hidden_states)))


class RecBasePreTrainedModel(RecBaseHubMixin, PreTrainedModel):
    """Weight init and capability flags. ``RecBaseHubMixin`` loads and saves the ranking policy and ships the
    pipeline's code; ``config.json`` lists every entry point in ``auto_map`` and the pipeline in
    ``custom_pipelines``."""

    config_class = RecBaseConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["RecBaseDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True

    def __init__(self, config: RecBaseConfig) -> None:
        super().__init__(config)
        hub_entry_points(config)
        # How the model ranks (GenerationConfig's role for decoding): from_pretrained replaces it with the saved one.
        self.ranking_policy = RankingPolicy.from_model_config(config)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # from_pretrained builds the model on the meta device; the non-persistent rotary table is not in
        # the checkpoint, so it must be recomputed here or it stays uninitialised memory.
        if isinstance(module, RecBaseRotaryEmbedding):
            module.inv_freq.copy_(module.inverse_frequencies(self.config))
        # Modules marked ``starts_at_zero`` (the content projection, the dense head, the popularity bias, the
        # code vectors until they are set): a new model computes exactly what it would without them, and its
        # dense score is the prior alone (the cosine to the recent items' content vectors).
        if getattr(module, "starts_at_zero", False):
            module.weight.zero_()


class RecBaseModel(RecBasePreTrainedModel):
    """The decoder stack without the output head; ``AutoModel`` loads this."""

    _auto_class = "AutoModel"  # what register_for_auto_class("AutoModel") sets: save_pretrained ships the code

    def __init__(self, config: RecBaseConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        # Frozen: row t is the quantizer's code vector of concept token t (zero for special tokens); training
        # fills it from the item tokenizer's ``code_latent_table``.
        self.code_latents = self.content_proj = None
        if config.latent_dim:
            self.code_latents = nn.Embedding(config.vocab_size, config.latent_dim)
            self.code_latents.weight.requires_grad_(False)
            self.code_latents.starts_at_zero = True
        if config.content_inputs:
            self.content_proj = nn.Linear(config.latent_dim, config.hidden_size, bias=False)
            self.content_proj.starts_at_zero = True
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(RecBaseDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RecBaseRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RecBaseRotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        content_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """input_ids (batch, seq); attention_mask (batch, past + seq) with 1 for real tokens, 0 for padding.
        ``past_key_values`` is the name transformers < 5.24 gives ``cache``. ``content_ids`` (batch, seq): the
        tokens whose code vectors feed ``content_inputs`` when they differ from ``input_ids`` (relabelled
        training windows); default ``input_ids``."""
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            vocab_size = self.embed_tokens.num_embeddings
            if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
                bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)].unique().tolist()
                raise ValueError(f"input_ids {bad[:10]} are outside the vocabulary [0, {vocab_size})")
            inputs_embeds = self.embed_tokens(input_ids)
            if self.content_proj is not None:
                content = self.code_latents(
                    content_ids if content_ids is not None else input_ids
                )  # (batch, seq, latent)
                inputs_embeds = inputs_embeds + self.content_proj(content.to(inputs_embeds.dtype))
        inputs_embeds = self.embedding_dropout(inputs_embeds)
        if use_cache is None:  # a cache only helps decoding; training steps skip the bookkeeping
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, seq = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        if position_ids is None:
            if attention_mask is not None:
                # Left padding: a token's position is the number of real tokens before it.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
            else:
                position_ids = torch.arange(past_length, past_length + seq, device=device).expand(batch, -1)

        if attention_mask is not None and past_length == 0 and bool(attention_mask.all()):
            attention_mask = None  # no padding: the plain causal kernel is faster and equivalent
        causal_mask = None
        if attention_mask is not None or past_length > 0:
            key_positions = torch.arange(past_length + seq, device=device)[None, :]
            query_positions = torch.arange(past_length, past_length + seq, device=device)[:, None]
            causal_mask = (key_positions <= query_positions)[None, None]  # (1, 1, seq, kv_length)
            if attention_mask is not None:
                # A padding query would see no key at all, which makes SDPA return NaN: let it see itself.
                causal_mask = (causal_mask & attention_mask[:, None, None, :].bool()) | (
                    key_positions == query_positions
                )
            # (batch or 1, 1, seq, kv_length)

        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden_states = inputs_embeds
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(hidden_states, position_embeddings, causal_mask, cache)
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm(hidden_states), **{CACHE_FIELD: cache if use_cache else None}
        )


@dataclasses.dataclass
class RecBaseCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the parts of the loss and the dense head's queries.

    code_loss: cross-entropy of the code tokens; dense_loss: the dense head's softmax loss (when negatives
    were given); dense_queries (batch, kept positions, item_vector_size): the predicted next-item content vector at
    each position (meaningful where an item ends), when asked for with ``return_dense_queries``.
    """

    code_loss: torch.FloatTensor | None = None
    dense_loss: torch.FloatTensor | None = None
    dense_queries: torch.FloatTensor | None = None


class RecBaseForCausalLM(RecBaseDenseHeadMixin, RecBasePreTrainedModel, GenerationMixin):
    """RecBase with its two heads: next-token prediction over concept tokens, and the dense head
    (``RecBaseDenseHeadMixin``)."""

    _auto_class = "AutoModelForCausalLM"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RecBaseConfig) -> None:
        super().__init__(config)
        self.model = RecBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dense_proj = self.popularity_bias = None
        if config.dense_head:
            self.dense_proj = nn.Linear(config.hidden_size, config.item_vector_size, bias=False)
            self.dense_proj.starts_at_zero = True
        if config.popularity_buckets:
            # Bucket 0 means "count unknown" and never gets a bias: a catalogue without counts scores as before.
            self.popularity_bias = nn.Embedding(config.popularity_buckets + 1, 1, padding_idx=0)
            self.popularity_bias.starts_at_zero = True
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        content_ids: torch.LongTensor | None = None,
        item_vectors: torch.Tensor | None = None,
        negative_ids: torch.LongTensor | None = None,
        negative_vectors: torch.Tensor | None = None,
        bucket_ids: torch.LongTensor | None = None,
        negative_buckets: torch.LongTensor | None = None,
        return_dense_queries: bool = False,
        residual_weights: torch.Tensor | None = None,
        **kwargs,
    ) -> RecBaseCausalLMOutput:
        """labels (batch, seq): the input ids themselves (shifted inside), -100 where no loss is wanted.

        Dense head (``config.dense_head``): ``item_vectors`` (batch, seq, item_vector_size) holds each item's content
        vector (the item tokenizer's ``item_vectors``) at the position of its last token and zeros elsewhere;
        without it, the sum of the item's code vectors is used. Training: ``negative_ids`` (batch, negatives,
        tokens_per_item) are items of each row's domain to contrast with every true next item of the row, with
        their ``negative_vectors`` (batch, negatives, item_vector_size); ``bucket_ids`` (batch, seq) the popularity
        bucket of the item each token belongs to and ``negative_buckets`` (batch, negatives) those of the
        negatives (catalogue counts only). ``content_ids`` as in ``RecBaseModel``. ``residual_weights`` (batch,): how
        much of the learned residual each row's ``dense_queries`` hold (0: the prior alone; default 1).

        Example:
            >>> model = AutoModelForCausalLM.from_pretrained("./outputs/recbase-tiny", trust_remote_code=True)
            >>> tokenizer = AutoTokenizer.from_pretrained("./outputs/recbase-tiny", trust_remote_code=True)
            >>> out = model(**tokenizer.encode_history(["amazon14_beauty/1"], return_tensors="pt"))
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            content_ids=content_ids,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        content_ids = content_ids if content_ids is not None else input_ids
        loss = code_loss = dense_loss = None
        if labels is not None:
            loss = code_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
            if negative_ids is not None:
                dense_loss = self.dense_loss(
                    hidden_states,
                    content_ids,
                    negative_ids,
                    item_vectors,
                    negative_vectors,
                    bucket_ids,
                    negative_buckets,
                )
                loss = code_loss + self.config.dense_loss_weight * dense_loss
        queries = None
        if return_dense_queries:
            queries = self.dense_queries(hidden_states, content_ids, item_vectors, residual_weights)[:, keep]
        return RecBaseCausalLMOutput(
            loss=loss,
            logits=logits,
            code_loss=code_loss,
            dense_loss=dense_loss,
            dense_queries=queries,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )


__all__ = [
    "RecBasePreTrainedModel",
    "RecBaseModel",
    "RecBaseForCausalLM",
]
