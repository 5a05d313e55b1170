"""Typed settings of every entry point, parsed with transformers' ``HfArgumentParser``: one set of defaults.

Each command line is a group of these dataclasses (``python -m training.pretrain --help`` lists them); a script
that runs another stage passes the stage's dataclasses (or copies of them made with ``dataclasses.replace``) to its
function (``pretrain.train``, ``evaluate.evaluate``) instead of writing its flags. ``--config file.json`` sets any
field; flags given on the command line win. The model's fields take their defaults from ``RecBaseConfig()`` and
the ranking's from ``RankingPolicy()``: the model the main job trains is the one the config describes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

from modeling_recbase import RankingPolicy, RecBaseConfig
from tokenization_recbase import DEFAULT_TEXT_ENCODER
from tokenization_recbase.embedding_cache_recbase import default_cache_dir
from training.bundled_domains import BUNDLED_DOMAINS, DEFAULT_DATA_DIR, DEFAULT_ZERO_SHOT_DOMAINS
from training.protocols import RECBASE

# Every linear layer of the decoder (Qwen2's names); the embeddings and head stay frozen.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VALIDATION_METRICS = ("ndcg@10", "recall@10", "auc", "gauc")
MODEL = RecBaseConfig()  # the defaults of every model field below
RANKING = RankingPolicy()  # the defaults of every ranking field below
NEW_MODEL_RERANK_TOP = 100  # a new model's whitened_rerank_top
MAX_HISTORY_ITEMS = MODEL.max_history_items  # items of a history the model reads: training windows and scoring
NEGATIVES = 20  # sampled negatives per user of the candidate-scoring protocol
# ModelArguments fields that are RecBaseConfig fields of the same name (a new model is built from them).
MODEL_CONFIG_FIELDS = (
    "content_inputs",
    "dense_head",
    "dense_loss_weight",
    "dense_temperature",
    "dense_history_items",
    "dense_history_decay",
    "popularity_buckets",
    "embedding_dropout",
    "residual_dropout",
    "attention_dropout",
)


@dataclass
class ItemTokenizerArguments:
    """The item tokenizer's vocabulary. TIGER's shape by default, sized for a CPU run: 3 x 256 codes and 32
    disambiguation codes (the paper's 4 x 1024 is ``--codebook_sizes 1024 1024 1024 1024``)."""

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    disambiguation_size: int = 32
    text_encoder: str = field(
        default=DEFAULT_TEXT_ENCODER, metadata={"help": "a local encoder folder or a known encoder package"}
    )


@dataclass
class DataArguments:
    """Which corpus, which domains, and how much of each history the model reads."""

    corpus_dir: str = field(metadata={"help": "folder written by python -m training.corpus"})
    domains: list[str] = field(metadata={"help": "the domains to train on"})
    tokenizer_dir: str | None = field(
        default=None, metadata={"help": "a saved RecBaseTokenizer (default: the --init_from checkpoint's)"}
    )
    max_history_items: int = field(
        default=MAX_HISTORY_ITEMS,
        metadata={"help": "items per training window; saved in the model config, read by evaluation and the pipeline"},
    )


@dataclass
class ModelArguments:
    """A new model (size and recipe; see ``RecBaseConfig`` for each field) or a checkpoint to fine-tune.

    The defaults are ``RecBaseConfig()``'s, the recipe ``training.select`` chose on held-out domains
    (``benchmarks/results/selection.md``); ``--dense_head False --content_inputs False --popularity_buckets 0``
    is the plain generative model, ranked by its code head."""

    preset: str = "recbase-tiny"
    init_from: str | None = field(default=None, metadata={"help": "a saved RecBase checkpoint to fine-tune"})
    embedding_init: Literal["random", "codebooks"] = field(
        default="random",
        metadata={"help": "codebooks: concept-token embeddings start from the quantizer's code vectors"},
    )
    freeze_concept_embeddings: bool = field(
        default=False, metadata={"help": "keep the token embeddings (and the tied output head) fixed"}
    )
    content_inputs: bool = field(
        default=MODEL.content_inputs, metadata={"help": "add each code's projected vector to its embedding"}
    )
    dense_head: bool = field(
        default=MODEL.dense_head,
        metadata={"help": "a dense head scoring items by cosine to a predicted content vector (LIGER)"},
    )
    dense_loss_weight: float = MODEL.dense_loss_weight
    dense_temperature: float = MODEL.dense_temperature
    dense_history_items: int = MODEL.dense_history_items
    dense_history_decay: float = MODEL.dense_history_decay
    popularity_buckets: int = field(
        default=MODEL.popularity_buckets,
        metadata={"help": "> 0: learn a score bias per popularity bucket, used when items have catalogue counts"},
    )
    embedding_dropout: float = MODEL.embedding_dropout
    residual_dropout: float = MODEL.residual_dropout
    attention_dropout: float = MODEL.attention_dropout
    code_score_weight: float | None = field(
        default=None,
        metadata={
            "help": "the ranking policy's weight of the code log-likelihood (default: 0 with a dense head, else 1)"
        },
    )
    calibrated_code_score: bool = field(
        default=RANKING.calibrated_code_score,
        metadata={"help": "the ranking policy scores codes by PMI (minus the empty history's log-likelihood)"},
    )
    reset_dense_residual: bool = field(
        default=False,
        metadata={"help": "start the dense head's residual at zero, so training starts at the prior (a new domain)"},
    )
    # Chosen on the pretraining domains held out in rotation, with no training (benchmarks/results/
    # frame_invariant_screen_full_softmax.md, sections 4 and 5), then confirmed on the test domains' validation
    # splits (section 6).
    whitened_rerank_top: int | None = field(
        default=None,
        metadata={
            "help": "where the prior alone ranks, its top items re-ordered by the whitened prior (0: none; "
            f"default: an --init_from checkpoint's own, else {NEW_MODEL_RERANK_TOP})"
        },
    )
    whitening_power: float | None = field(
        default=None,
        metadata={
            "help": "the re-rank scales each axis by its variance^(-power/2) (default: an --init_from checkpoint's "
            f"own, else {RANKING.whitening_power})"
        },
    )
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
    checkpoint_dir: str | None = field(
        default=None,
        metadata={"help": "training state (default: <output_dir>-checkpoints, never inside the Hub folder)"},
    )
    per_device_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-3
    dense_head_learning_rate: float = field(
        default=2e-4, metadata={"help": "learning rate of the dense head's residual (0: --learning_rate)"}
    )
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: --num_epochs)"})
    # An upper bound: early stopping on validation may end the run sooner.
    num_epochs: float = 1.5
    min_steps: int = field(default=0, metadata={"help": "at least this many steps when --num_epochs gives fewer"})
    max_grad_norm: float = 1.0
    num_negatives: int = field(default=128, metadata={"help": "same-domain items per window for the dense loss"})
    relabel_share: float = field(default=0.0, metadata={"help": "share of windows with relabelled codes"})
    validation_domains: list[str] = field(default_factory=list)
    validation_metric: Literal[VALIDATION_METRICS] = field(
        default="ndcg@10",
        metadata={"help": "mean over the validation domains; ranking metrics use the full constrained ranking"},
    )
    validation_users: int = field(default=500, metadata={"help": "users sampled per validation domain"})
    validation_negatives: int = field(default=NEGATIVES, metadata={"help": "sampled negatives per validation user"})
    validate_every: int = 500
    early_stopping_patience: int = field(
        default=3, metadata={"help": "stop after this many validations without improvement (0: never stop early)"}
    )
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder, or 'latest'"})
    log_every: int = 25
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0


@dataclass
class EvaluationArguments:
    """A checkpoint against the baselines, on the given split of each domain's users. Ranking settings left at
    None are the checkpoint's ranking policy's."""

    checkpoint: str | None = field(default=None, metadata={"help": "a saved RecBase folder or LoRA adapter"})
    corpus_dir: str | None = field(default=None, metadata={"help": "folder written by python -m training.corpus"})
    domains: list[str] = field(default_factory=list, metadata={"help": "the domains to evaluate"})
    zero_shot: list[str] = field(
        default_factory=list, metadata={"help": "domains the model never trained on (labelled so)"}
    )
    split: Literal["test", "validation"] = "test"
    max_users: int = field(default=0, metadata={"help": "sample this many users per domain (0: all)"})
    negatives: int = field(default=NEGATIVES, metadata={"help": "sampled negatives per user for candidate scoring"})
    batch_size: int = field(default=16, metadata={"help": "users ranked at once"})
    num_beams: int | None = field(default=None, metadata={"help": "beam width where the code head scores"})
    max_history_items: int | None = field(default=None, metadata={"help": "history items read"})
    code_score_weight: float | None = field(default=None, metadata={"help": "the code head's weight in scores"})
    whitened_rerank_top: int | None = field(
        default=None, metadata={"help": "the prior's top items re-ranked by the whitened prior (0: none)"}
    )
    text_similarity_items: int = 1
    catalogue_counts: bool = field(
        default=False,
        metadata={"help": "give the model each domain's item counts from its training part (a separate setting)"},
    )
    exclude_history: bool = field(
        default=True,
        metadata={"help": "full rankings leave out the items of the user's history (as the pipeline does)"},
    )
    baselines: bool = field(default=True, metadata={"help": "also evaluate text similarity, popularity and random"})
    model_name: str = RECBASE
    cache_dir: str = str(default_cache_dir())
    output: str | None = field(
        default=None, metadata={"help": "results JSON (default: <checkpoint>/eval_results.json)"}
    )
    seed: int = 0

    def ranking_overrides(self) -> dict:
        """The ``RankingPolicy`` fields this run sets."""
        values = {
            "num_beams": self.num_beams,
            "max_history_items": self.max_history_items,
            "code_score_weight": self.code_score_weight,
            "whitened_rerank_top": self.whitened_rerank_top,
        }
        return {name: value for name, value in values.items() if value is not None}


@dataclass
class MainJobArguments:
    """The main job's data: the tokenizer, model, training and evaluation settings are the stages' own."""

    data_dir: str = str(DEFAULT_DATA_DIR)
    work_dir: str | None = field(
        default=None, metadata={"help": "corpus and tokenizer staging (default: <output_dir>-work)"}
    )
    cache_dir: str = str(default_cache_dir())
    domains: list[str] = field(default_factory=lambda: list(BUNDLED_DOMAINS))
    zero_shot: list[str] = field(default_factory=lambda: list(DEFAULT_ZERO_SHOT_DOMAINS))
    in_domain_eval: list[str] = field(default_factory=lambda: ["amazon14_beauty"])
    max_history_items: int = MAX_HISTORY_ITEMS


@dataclass
class QuantizerFitConfig:
    """How the CL-VAE is shaped and trained."""

    codebook_sizes: list[int]  # the vocabulary's: ItemTokenizerArguments has the default
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    latent_dim: int = MODEL.latent_dim
    epochs_per_level: int = 8  # curriculum: a new level is switched on every this many epochs
    final_epochs: int = 8  # epochs with every level on, after the curriculum
    batch_size: int = 512
    learning_rate: float = 1e-3
    commitment_weight: float = 0.25
    dead_code_every: int = 2  # epochs between re-initialisations of unused codes
    kmeans_iterations: int = 25
    seed: int = 0


@dataclass
class FitArguments:
    """Where the corpus comes from and where the tokenizer goes."""

    output_dir: str = "outputs/item-tokenizer"
    data_dir: str = str(DEFAULT_DATA_DIR)
    domains: list[str] = field(default_factory=lambda: list(BUNDLED_DOMAINS))
    zero_shot: list[str] = field(
        default_factory=lambda: list(DEFAULT_ZERO_SHOT_DOMAINS),
        metadata={"help": "domains that get IDs through add_items only (never fitted on)"},
    )
    cache_dir: str = str(default_cache_dir())
    seed: int = 0


@dataclass
class IndexArguments:
    """A saved folder, the corpus whose domains it should index, and the new folder."""

    checkpoint: str
    corpus_dir: str
    domains: list[str]
    output_dir: str
    catalogue_counts: bool = False
    cache_dir: str = str(default_cache_dir())


@dataclass
class AdaptArguments:
    """A pretrained folder adapted to new domains (LoRA, full fine-tuning), beside zero-shot and training from
    scratch (RecBase, SASRec), with all training users and with samples of them."""

    base: str = field(metadata={"help": "the pretrained checkpoint (its tokenizer indexes the domains)"})
    corpus_dir: str
    domains: list[str]
    output_dir: str = "outputs/adapt"
    results_file: str | None = field(default=None, metadata={"help": "default: <output_dir>/adaptation.json"})
    train_fractions: list[float] = field(
        default_factory=lambda: [1.0, 0.1], metadata={"help": "shares of the training users, one run each"}
    )
    lora_rank: int = 8
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))
    merge_lora: bool = False
    num_epochs: float = 3.0
    min_steps: int = field(default=100, metadata={"help": "at least this many steps, however small the sample"})
    lora_learning_rate: float = 2e-3
    full_learning_rate: float = 5e-4
    scratch_learning_rate: float = field(default=2e-3, metadata={"help": "RecBase from scratch (pretraining's)"})
    dense_head_learning_rate: float = field(default=1e-3, metadata={"help": "the dense head's residual, every run"})
    reset_dense_residual: bool = field(
        default=True, metadata={"help": "adapted runs start the dense residual at zero: at the prior"}
    )
    per_device_batch_size: int = 64
    warmup_steps: int = 20
    validation_users: int = field(default=500, metadata={"help": "validation users: kept step and code weight"})
    validate_every: int = 50
    early_stopping_patience: int = 3
    code_score_weights: list[float] = field(
        default_factory=lambda: [0.1, 0.3, 1.0], metadata={"help": "the code head's weights tried (and 0)"}
    )
    seed: int = 0


@dataclass
class SASRecArguments:
    """SASRec trained on one domain alone (``training.sasrec``): its size, optimisation and CPU budget."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_length: int = 50
    dropout: float = 0.2
    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = field(default=5, metadata={"help": "epochs without a better validation NDCG@10 before stopping"})
    budget_minutes: float = field(default=3.0, metadata={"help": "wall-time limit of one training run"})
    validation_users: int = 500
    seed: int = 0


@dataclass
class SelectionArguments:
    """Recipe screening on held-out domains (``training.select``)."""

    output_dir: str = "outputs/selection"
    data_dir: str = str(DEFAULT_DATA_DIR)
    corpus_dir: str | None = field(default=None, metadata={"help": "a corpus already built (default: build one)"})
    cache_dir: str = str(default_cache_dir())
    domains: list[str] = field(default_factory=lambda: list(BUNDLED_DOMAINS))
    test_domains: list[str] = field(
        default_factory=lambda: list(DEFAULT_ZERO_SHOT_DOMAINS),
        metadata={"help": "never trained on, never evaluated here"},
    )
    validation_domains: list[str] = field(
        default_factory=lambda: ["amazon18_scientific", "xwines", "yelp_p5"],
        metadata={"help": "held out of the tokenizer's fit and of pretraining (a long-tail catalogue, two others)"},
    )
    rotation: bool = field(
        default=True,
        metadata={"help": "hold out one validation domain at a time, training on the others (False: all at once)"},
    )
    in_domain: str = "amazon14_beauty"
    recipes: list[str] = field(
        default_factory=list, metadata={"help": "names of training.select.RECIPES (default: all)"}
    )
    max_steps: int = 600
    validate_every: int = 150
    eval_users: int = field(default=500, metadata={"help": "validation users sampled per domain"})
    negatives: int = field(default=NEGATIVES, metadata={"help": "sampled negatives per user (candidate scoring)"})
    seed: int = 0


def _prefixed(dataclass_type: type, prefix: str) -> type:
    """A dataclass whose fields are ``dataclass_type``'s named ``<prefix><name>``, with the same types and defaults
    (a group of flags such as the main job's ``--eval_max_users``)."""
    hints = typing.get_type_hints(dataclass_type)
    fields = []
    for f in dataclasses.fields(dataclass_type):
        default = (
            {"default": f.default}
            if f.default is not dataclasses.MISSING
            else {"default_factory": f.default_factory}
            if f.default_factory is not dataclasses.MISSING
            else {}
        )
        fields.append((prefix + f.name, hints[f.name], field(metadata=f.metadata, **default)))
    return dataclasses.make_dataclass(f"{prefix}{dataclass_type.__name__}", fields)


def parse_arguments(
    dataclass_types: tuple, argv: list[str] | None = None, description: str | None = None, defaults: dict | None = None
):
    """The dataclasses filled from ``argv``. An entry ``(EvaluationArguments, "eval_")`` takes its fields from flags
    ``--eval_<name>``. ``--config file.json`` gives values that flags override, and ``defaults`` (a script's own,
    such as the main job's output folder) values that both override."""
    groups = [entry if isinstance(entry, tuple) else (entry, "") for entry in dataclass_types]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(
        [_prefixed(cls, prefix) if prefix else cls for cls, prefix in groups],
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    parsed = parser.parse_args_into_dataclasses(args=rest)[: len(groups)]  # the rest: --config's namespace
    parsed = [
        cls(**{f.name: getattr(value, prefix + f.name) for f in dataclasses.fields(cls)}) if prefix else value
        for (cls, prefix), value in zip(groups, parsed)
    ]
    return parsed if len(parsed) > 1 else parsed[0]
