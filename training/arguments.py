"""Typed settings of every entry point, parsed with transformers' ``HfArgumentParser``: one set of defaults.

Each command line is a group of these dataclasses (``python -m training.pretrain --help`` lists them); a script
that runs another stage builds the dataclasses and calls the stage's function (``pretrain.train``,
``evaluate.evaluate``) instead of writing its flags. ``--config file.json`` sets any field; flags given on the
command line win.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

from tokenization_recbase import DEFAULT_TEXT_ENCODER
from training.embedding import DEFAULT_CACHE_DIR
from training.protocols import RECBASE

# Every linear layer of the decoder (Qwen2's names); the embeddings and head stay frozen.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VALIDATION_METRICS = ("ndcg@10", "recall@10", "auc", "gauc")
MAX_HISTORY_ITEMS = 20  # items of a history the model reads: training windows, evaluation, the pipeline


@dataclass
class ItemTokenizerArguments:
    """The item tokenizer's vocabulary. TIGER's shape by default, sized for a CPU run: 3 x 256 codes and 32
    disambiguation codes (the paper's 4 x 1024 is ``--codebook_sizes 1024 1024 1024 1024``)."""

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    disambiguation_size: int = 32
    text_encoder: str = field(default=DEFAULT_TEXT_ENCODER, metadata={
        "help": "a local encoder folder or a known encoder package"})


@dataclass
class DataArguments:
    """Which corpus, which domains, and how much of each history the model reads."""

    corpus_dir: str = field(metadata={"help": "folder written by python -m training.corpus"})
    domains: list[str] = field(metadata={"help": "the domains to train on"})
    tokenizer_dir: str | None = field(default=None, metadata={
        "help": "a saved RecBaseTokenizer (default: the --init_from checkpoint's)"})
    max_history_items: int = field(default=MAX_HISTORY_ITEMS, metadata={
        "help": "items per training window; saved in the model config, read by evaluation and the pipeline"})


@dataclass
class ModelArguments:
    """A new model (size and recipe; see ``RecBaseConfig`` for each field) or a checkpoint to fine-tune.

    The recipe's defaults are what ``training.select`` chose on held-out domains
    (``benchmarks/results/selection.md``); ``--dense_head False --content_inputs False --popularity_buckets 0``
    is the plain generative model."""

    preset: str = "recbase-tiny"
    init_from: str | None = field(default=None, metadata={"help": "a saved RecBase checkpoint to fine-tune"})
    embedding_init: Literal["random", "codebooks"] = field(default="random", metadata={
        "help": "codebooks: concept-token embeddings start from the quantizer's code vectors"})
    freeze_concept_embeddings: bool = field(default=False, metadata={
        "help": "keep the token embeddings (and the tied output head) fixed"})
    content_inputs: bool = field(default=True, metadata={"help": "add each code's projected vector to its embedding"})
    dense_head: bool = field(default=True, metadata={
        "help": "a dense head scoring items by cosine to a predicted content vector (LIGER)"})
    dense_loss_weight: float = 1.0
    dense_temperature: float = 0.1
    dense_history_items: int = 10
    dense_history_decay: float = 0.5
    # With a dense head the code head still trains (its loss shapes the decoder) but has no weight in scores by
    # default: on Beauty's validation users it pulled Recall@10 from 0.069 to 0.039 (benchmarks/results/in_domain.md).
    code_score_weight: float | None = field(default=None, metadata={
        "help": "weight of the code log-likelihood in scores (default: 0 with a dense head, else 1)"})
    calibrated_code_score: bool = field(default=False, metadata={
        "help": "score codes by PMI (minus the empty history's log-likelihood)"})
    popularity_buckets: int = field(default=10, metadata={
        "help": "> 0: learn a score bias per popularity bucket, used when items have catalogue counts"})
    embedding_dropout: float = 0.0
    residual_dropout: float = 0.0
    attention_dropout: float = 0.0
    lora_rank: int = field(default=0, metadata={"help": "train a LoRA adapter of this rank (0: all weights)"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling numerator (default: 2 * rank)"})
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))
    merge_lora: bool = field(default=False, metadata={"help": "save the merged model instead of the adapter"})


@dataclass
class PretrainingArguments:
    """Optimisation, checkpoint selection and checkpointing.

    Every ``validate_every`` steps (and at step 0, the prior itself) ``validation_metric`` is computed on the
    validation split of ``validation_domains``: the training domains' own validation users for in-domain quality,
    or held-out domains for zero-shot selection. The best step is what gets saved; a run stops after
    ``early_stopping_patience`` validations without a new best."""

    output_dir: str = field(metadata={"help": "the Hub folder this run writes"})
    checkpoint_dir: str | None = field(default=None, metadata={
        "help": "training state (default: <output_dir>-checkpoints, never inside the Hub folder)"})
    per_device_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-3
    dense_head_learning_rate: float = field(default=2e-4, metadata={
        "help": "learning rate of the dense head's residual (0: --learning_rate)"})
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: --num_epochs)"})
    # An upper bound: in-domain validation was still rising at 1.8 epochs; early stopping may end sooner.
    num_epochs: float = 1.5
    max_grad_norm: float = 1.0
    num_negatives: int = field(default=128, metadata={"help": "same-domain items per window for the dense loss"})
    relabel_share: float = field(default=0.0, metadata={"help": "share of windows with relabelled codes"})
    validation_domains: list[str] = field(default_factory=list)
    validation_metric: Literal[VALIDATION_METRICS] = field(default="ndcg@10", metadata={
        "help": "mean over the validation domains; ranking metrics use the full constrained ranking"})
    validation_users: int = field(default=500, metadata={"help": "users sampled per validation domain"})
    validation_negatives: int = field(default=20, metadata={"help": "sampled negatives per validation user"})
    validate_every: int = 500
    early_stopping_patience: int = field(default=3, metadata={
        "help": "stop after this many validations without improvement (0: never stop early)"})
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder, or 'latest'"})
    log_every: int = 25
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0


@dataclass
class EvaluationArguments:
    """A checkpoint against the baselines, on the given split of each domain's users."""

    checkpoint: str
    corpus_dir: str
    domains: list[str]
    zero_shot: list[str] = field(default_factory=list, metadata={
        "help": "domains the model never trained on (labelled so)"})
    split: Literal["test", "validation"] = "test"
    max_users: int = field(default=0, metadata={"help": "sample this many users per domain (0: all)"})
    negatives: int = field(default=20, metadata={"help": "sampled negatives per user for candidate scoring"})
    num_beams: int = 20
    batch_size: int = field(default=16, metadata={"help": "users per beam-search batch"})
    max_history_items: int | None = field(default=None, metadata={"help": "default: the model config's"})
    text_similarity_items: int = 1
    code_score_weight: float | None = field(default=None, metadata={
        "help": "the code head's weight in item scores for this run (default: the model's)"})
    catalogue_counts: bool = field(default=False, metadata={
        "help": "give the model each domain's item counts from its training part (a separate setting)"})
    exclude_history: bool = field(default=True, metadata={
        "help": "full rankings leave out the items of the user's history (as the pipeline does)"})
    baselines: bool = field(default=True, metadata={"help": "also evaluate text similarity, popularity and random"})
    model_name: str = RECBASE
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    output: str | None = field(default=None, metadata={"help": "results JSON (default: <checkpoint>/eval_results.json)"})
    seed: int = 0


def parse_arguments(dataclass_types: tuple[type, ...], argv: list[str] | None = None, description: str | None = None,
                    defaults: dict | None = None):
    """The dataclasses filled from ``argv``; ``--config file.json`` gives values that flags override, and
    ``defaults`` (a script's own, such as the main job's output folder) values that both override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(dataclass_types, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON file of field values (command-line flags override it)")
    for action in parser._actions:
        if action.nargs == "+" and not action.required:
            action.nargs = "*"  # a list with a default may be given empty ("--zero_shot" alone: no zero-shot domain)
    values = {**(defaults or {}), **(json.loads(Path(known.config).read_text()) if known.config else {})}
    unknown = sorted(set(values) - {action.dest for action in parser._actions})
    if unknown:
        raise ValueError(f"{known.config or 'defaults'}: unknown settings {unknown}")
    for action in parser._actions:
        if action.dest in values:
            action.required, action.default = False, values[action.dest]
    parsed = parser.parse_args_into_dataclasses(args=rest)[: len(dataclass_types)]  # the rest: --config's namespace
    return parsed if len(parsed) > 1 else parsed[0]
