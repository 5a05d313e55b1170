"""Cross-domain pretraining of RecBase with Accelerate (the shape of transformers' ``no_trainer`` examples).

Each user's training history (leave-one-out: the last two items are held out) becomes ``<bos>`` followed by
its items' concept tokens, cut into windows of at most ``--max_items`` items; the loss is next-token
prediction over every concept token. The same script runs unchanged:

    python -m training.pretrain --corpus_dir C --tokenizer_dir T --output_dir O          # CPU or one GPU
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m training.pretrain ...              # two CPU processes
    accelerate launch --config_file training/accelerate_configs/ddp.yaml -m training.pretrain ...  # GPUs

``--init_from CHECKPOINT`` fine-tunes a saved model instead of starting from scratch, and ``--lora_rank R``
trains a LoRA adapter on it instead (PEFT; the output folder then holds the adapter and the tokenizer, or
the merged model with ``--merge_lora``). ``--config file.json`` sets any option; flags given on the command
line win. Checkpoints (model, optimizer, scheduler, RNG and step) go to ``--checkpoint_dir`` (default
``<output_dir>-checkpoints``, outside the folder one uploads: they hold pickled optimizer state) as ``step_<n>``
every ``--checkpointing_steps``; ``--resume_from_checkpoint latest`` continues exactly where the last one stopped.
"""

from __future__ import annotations

import argparse
from collections import Counter
import importlib.util
import json
import math
import os
import shutil
import time
import zlib
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import set_seed
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from modeling_recbase import NextItemGenerationPipeline, RecBaseConfig, RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer, check_model_config
from training.atomic import write_json_atomically
from training.corpus import leave_one_out, load_corpus, to_sequences
from training.evaluate import EvaluationSet, RecBaseRecommender, build_evaluation_set, evaluate_recommender

# Every linear layer of the decoder (Qwen2's names); the embeddings and head stay frozen.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class JsonlTracker(GeneralTracker):
    """Appends each ``accelerator.log`` call as one JSON line (offline, no extra package)."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        self.log({"config": values}, step=None)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")


class TrainingProgress:
    """The optimizer-step counter, saved and restored with every checkpoint by ``save_state``."""

    def __init__(self) -> None:
        self.completed_steps = 0

    def state_dict(self) -> dict:
        return {"completed_steps": self.completed_steps}

    def load_state_dict(self, state: dict) -> None:
        self.completed_steps = int(state["completed_steps"])


def training_windows(tokenizer: RecBaseTokenizer, histories: list[list[str]], max_items: int,
                     popularity_buckets: int = 0) -> Dataset:
    """Histories of item keys -> token windows ``<bos> item ... item`` of at most ``max_items`` items.

    A long history is cut from its end backwards, so the most recent items are always in one window and
    every item is trained on once. Histories of one item teach nothing (no next item) and are skipped.
    Columns: ``input_ids``, ``domain`` (of the window's items) and, with ``popularity_buckets``, ``bucket_ids``
    (the bucket of the item each token belongs to, 0 for ``<bos>``).
    """
    rows: dict[str, list] = {"input_ids": [], "domain": [], "bucket_ids": []}
    for history in histories:
        for end in range(len(history), 1, -max_items):
            window = history[max(0, end - max_items) : end]
            if len(window) > 1:
                rows["input_ids"].append(tokenizer.encode_history(window)["input_ids"])
                rows["domain"].append(window[0].split("/", 1)[0])
                if popularity_buckets:
                    buckets = tokenizer.popularity_buckets(window, popularity_buckets).tolist()
                    rows["bucket_ids"].append([0] + [b for b in buckets for _ in range(tokenizer.tokens_per_item)])
    if not rows["input_ids"]:
        raise ValueError("no training sequence has two or more items")
    if not popularity_buckets:
        del rows["bucket_ids"]
    return Dataset.from_dict(rows)


class LengthGroupedSampler(Sampler[int]):
    """A shuffle that keeps windows of similar length in one batch, so little compute goes to padding.

    Indices are shuffled, cut into groups of ``batch_size * group_batches``, each group sorted by length and
    cut into batches, and the batches shuffled (a short last batch stays last, so batch boundaries hold). The
    order depends only on (seed, epoch): every process of a distributed run, and a resumed run, sees the same.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_batches: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.group_batches = lengths, batch_size, seed, group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group_size = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group_size):
            group = sorted(order[start : start + group_size], key=lambda index: -self.lengths[index])
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()] + last
        return iter([index for batch in shuffled for index in batch])


def collate_right_padded(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right padding: with causal attention no real token ever sees a pad, so no attention mask is needed
    (and the fast causal kernel is used). Labels are the inputs with pads ignored (-100); ``bucket_ids`` are
    padded with 0 when the windows have them."""
    width = max(len(example["input_ids"]) for example in batch)
    collated = {}
    for name, pad in (("input_ids", pad_token_id), ("bucket_ids", 0)):
        if name in batch[0]:
            collated[name] = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, example in enumerate(batch):
                collated[name][row, : len(example[name])] = torch.tensor(example[name])
    collated["labels"] = collated["input_ids"].masked_fill(collated["input_ids"] == pad_token_id, -100)
    return collated


def relabel_codes(input_ids: torch.LongTensor, level_offsets: list[int], level_sizes: list[int],
                  generator: torch.Generator) -> tuple[torch.LongTensor, list[torch.LongTensor]]:
    """Identity-free training: one window's codes of each level mapped through a random permutation of that
    level's codes (fixed within the window). Which positions share a code, and so repeats and shared
    prefixes, is kept; what a code means in a domain is not, so only the window itself can tell what comes
    next, as in a domain never seen.

    input_ids (seq,) -> (relabelled (seq,), the permutation of each level: code k became permutation[k]).
    """
    relabelled = input_ids.clone()
    permutations = []
    for offset, size in zip(level_offsets, level_sizes):
        permutation = torch.randperm(size, generator=generator)
        in_level = (input_ids >= offset) & (input_ids < offset + size)
        relabelled[in_level] = offset + permutation[input_ids[in_level] - offset]
        permutations.append(permutation)
    return relabelled, permutations


class PretrainingCollator:
    """Right-padded batches (``collate_right_padded``), plus what the training recipe asks for:

    - ``relabel_share``: that share of windows is relabelled (``relabel_codes``); ``content_ids`` keep the
      true tokens, whose code vectors feed the content inputs and the dense head;
    - ``num_negatives``: for the dense head, that many items drawn uniformly from each window's domain
      (``negative_ids`` (batch, negatives, tokens_per_item) and their ``negative_vectors``, with
      ``negative_buckets`` given catalogue counts), and each window's ``item_vectors`` (batch, seq, latent):
      every item's content vector at the position of its last token (right padding: item j ends at
      ``(j + 1) * tokens_per_item``).
    """

    def __init__(self, tokenizer: RecBaseTokenizer, relabel_share: float = 0.0, num_negatives: int = 0,
                 popularity_buckets: int = 0, seed: int = 0) -> None:
        self.pad_token_id, self.relabel_share, self.num_negatives = tokenizer.pad_token_id, relabel_share, num_negatives
        sizes = tokenizer.codebook_sizes + ([tokenizer.disambiguation_size] if tokenizer.disambiguation_size else [])
        self.level_sizes = sizes
        self.level_offsets = [tokenizer.codes_to_token_ids([0] * len(sizes))[level] for level in range(len(sizes))]
        self.tokenizer = tokenizer
        self.domain_items: dict[str, torch.LongTensor] = {}
        self.domain_vectors: dict[str, torch.Tensor] = {}
        self.domain_buckets: dict[str, torch.LongTensor] = {}
        if num_negatives:
            for domain in sorted(tokenizer.domains):
                keys = tokenizer.domain_items(domain)
                self.domain_items[domain] = tokenizer.item_token_ids(keys)
                self.domain_vectors[domain] = tokenizer.item_vectors(keys)
                if popularity_buckets:
                    self.domain_buckets[domain] = tokenizer.popularity_buckets(keys, popularity_buckets)
        self.seed = seed

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        collated = collate_right_padded(batch, self.pad_token_id)
        # Random draws depend only on (seed, batch): a resumed run, which replays the same batches, draws the same.
        generator = torch.Generator().manual_seed(
            self.seed * 2**32 + zlib.crc32(collated["input_ids"].numpy().tobytes()))
        if self.relabel_share:
            collated["content_ids"] = collated["input_ids"]
            relabelled = collated["input_ids"].clone()
            chosen = torch.rand(len(batch), generator=generator) < self.relabel_share
            for row in chosen.nonzero().squeeze(-1).tolist():
                relabelled[row] = relabel_codes(relabelled[row], self.level_offsets, self.level_sizes, generator)[0]
            collated["input_ids"] = relabelled
            collated["labels"] = relabelled.masked_fill(collated["labels"] == -100, -100)
        if self.num_negatives:
            tokens_per_item = self.tokenizer.tokens_per_item
            negatives, vectors, buckets = [], [], []
            item_vectors = torch.zeros(*collated["input_ids"].shape, next(iter(self.domain_vectors.values())).shape[-1])
            for row, example in enumerate(batch):
                keys = self.tokenizer.decode_items(example["input_ids"])
                item_vectors[row, tokens_per_item : tokens_per_item * (len(keys) + 1) : tokens_per_item] = \
                    self.tokenizer.item_vectors(keys)
                items = self.domain_items[example["domain"]]
                drawn = torch.randint(len(items), (self.num_negatives,), generator=generator)
                negatives.append(items[drawn])
                vectors.append(self.domain_vectors[example["domain"]][drawn])
                if self.domain_buckets:
                    buckets.append(self.domain_buckets[example["domain"]][drawn])
            collated.update(item_vectors=item_vectors, negative_ids=torch.stack(negatives),
                            negative_vectors=torch.stack(vectors))
            if buckets:
                collated["negative_buckets"] = torch.stack(buckets)
        return collated


VALIDATION_METRICS = ("ndcg@10", "recall@10", "auc", "gauc")


@torch.no_grad()
def validation_metrics(model: torch.nn.Module, tokenizer: RecBaseTokenizer, validation_sets: list[EvaluationSet],
                       max_items: int, full_ranking: bool = True) -> dict[str, float]:
    """Each of ``VALIDATION_METRICS`` averaged over the validation sets, and each domain's metrics. The full
    ranking (Recall@10 / NDCG@10, history excluded, as in evaluation) runs when ``full_ranking`` or when it is
    cheap (the dense head alone ranks, no beam search)."""
    recommender = RecBaseRecommender(model.eval(), tokenizer, max_items, batch_size=32)
    cheap_ranking = model.config.dense_head and not any(model.config.code_score_weights([d.items[0] for d in validation_sets]))
    protocols = ("candidate_scoring", "full_ranking") if full_ranking or cheap_ranking else ("candidate_scoring",)
    per_domain = {data.domain: evaluate_recommender(recommender, data, ks=(10,), protocols=protocols)
                  for data in validation_sets}
    means = {name: sum(m[name] for m in per_domain.values()) / len(per_domain)
             for name in VALIDATION_METRICS if name in next(iter(per_domain.values()))}
    return {**means, **{f"{name}_{domain}": value for domain, m in per_domain.items() for name, value in m.items()}}


class CheckpointSelector:
    """Keeps a copy of the weights at the best validation score seen so far, and says when ``patience``
    validations in a row have not beaten it (early stopping; ``patience`` 0 never stops)."""

    def __init__(self, metric: str, patience: int = 0) -> None:
        self.metric, self.patience = metric, patience
        self.best_step, self.best_score, self.best_state = -1, float("-inf"), None
        self.history: list[dict] = []
        self.validations_since_best = 0

    def update(self, step: int, scores: dict[str, float], model: torch.nn.Module) -> None:
        self.history.append({"step": step, **scores})
        if scores[self.metric] > self.best_score:
            self.best_step, self.best_score = step, scores[self.metric]
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.validations_since_best = 0
        else:
            self.validations_since_best += 1

    @property
    def should_stop(self) -> bool:
        return 0 < self.patience <= self.validations_since_best

    def summary(self) -> dict:
        """What ``validation.json`` holds: the kept step and its score, and every validation."""
        return {"best": {"step": self.best_step, "metric": self.metric, self.metric: self.best_score},
                "patience": self.patience, "stopped_early": self.should_stop, "history": self.history}


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    steps = sorted((int(p.name.split("_")[1]), p) for p in checkpoint_dir.glob("step_*") if p.name.split("_")[1].isdigit())
    return steps[-1][1] if steps else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON file of option values (command-line flags override it)")
    parser.add_argument("--corpus_dir", required=True, help="folder written by training.corpus.build_corpus")
    parser.add_argument("--tokenizer_dir", help="a saved RecBaseTokenizer (default: the --init_from checkpoint's)")
    parser.add_argument("--init_from", help="a saved RecBase checkpoint to fine-tune (default: a new model)")
    parser.add_argument("--lora_rank", type=int, default=0, help="train a LoRA adapter of this rank (0: all weights)")
    parser.add_argument("--lora_alpha", type=float, default=None, help="LoRA scaling numerator (default: 2 * rank)")
    parser.add_argument("--lora_dropout", type=float, default=0.0)
    parser.add_argument("--lora_target_modules", nargs="+", default=list(LORA_TARGET_MODULES))
    parser.add_argument("--merge_lora", action="store_true", help="save the merged model instead of the adapter")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--domains", nargs="+", required=True, help="pretraining domains")
    parser.add_argument("--preset", default="recbase-tiny")
    parser.add_argument("--max_items", type=int, default=20, help="items per training window")
    parser.add_argument("--embedding_init", default="random", choices=["random", "codebooks"],
                        help="codebooks: concept-token embeddings start from the quantizer's code vectors")
    parser.add_argument("--freeze_concept_embeddings", action="store_true",
                        help="keep the token embeddings (and the tied output head) fixed")
    # The recipe of new models (see RecBaseConfig for each model field). The defaults are what training.select
    # chose on held-out domains (benchmarks/results/selection.md); --no-dense_head --no-content_inputs
    # --popularity_buckets 0 is the plain generative model.
    parser.add_argument("--content_inputs", action=argparse.BooleanOptionalAction, default=True,
                        help="add each code's projected vector to its input embedding")
    parser.add_argument("--dense_head", action=argparse.BooleanOptionalAction, default=True,
                        help="a dense head scoring items by cosine to a predicted content vector (LIGER)")
    parser.add_argument("--dense_loss_weight", type=float, default=1.0)
    parser.add_argument("--dense_temperature", type=float, default=0.1)
    parser.add_argument("--dense_history_items", type=int, default=10)
    parser.add_argument("--dense_history_decay", type=float, default=0.5)
    parser.add_argument("--dense_head_learning_rate", type=float, default=2e-4,
                        help="learning rate of the dense head's residual (0: --learning_rate)")
    # With a dense head the code head still trains (its loss shapes the decoder) but has no weight in scores by
    # default: on Beauty's validation users it pulled Recall@10 from 0.069 to 0.039 (benchmarks/results/in_domain.md).
    parser.add_argument("--code_score_weight", type=float, default=None,
                        help="weight of the code log-likelihood in scores (default: 0 with a dense head, else 1)")
    parser.add_argument("--calibrated_code_score", action=argparse.BooleanOptionalAction, default=False,
                        help="score codes by PMI (minus the empty history's log-likelihood)")
    parser.add_argument("--popularity_buckets", type=int, default=10,
                        help="> 0: learn a score bias per popularity bucket, used when items have catalogue counts")
    parser.add_argument("--embedding_dropout", type=float, default=0.0)
    parser.add_argument("--residual_dropout", type=float, default=0.0)
    parser.add_argument("--attention_dropout", type=float, default=0.0)
    parser.add_argument("--num_negatives", type=int, default=128, help="same-domain items per window for the dense loss")
    parser.add_argument("--relabel_share", type=float, default=0.0, help="share of windows with relabelled codes")
    # Checkpoint selection: every --validate_every steps (and at step 0, the prior itself), --validation_metric
    # on the validation split of --validation_domains: the pretraining domains' own validation users for
    # in-domain quality, or held-out domains for zero-shot selection. The best step is what gets saved; a
    # run stops after --early_stopping_patience validations without a new best.
    parser.add_argument("--validation_domains", nargs="*", default=[])
    parser.add_argument("--validation_metric", default="ndcg@10", choices=VALIDATION_METRICS,
                        help="mean over the validation domains; ranking metrics use the full constrained ranking")
    parser.add_argument("--validation_users", type=int, default=500, help="users sampled per validation domain")
    parser.add_argument("--validation_negatives", type=int, default=20, help="sampled negatives per validation user")
    parser.add_argument("--validate_every", type=int, default=200)
    parser.add_argument("--early_stopping_patience", type=int, default=3,
                        help="stop after this many validations without improvement (0: never stop early)")
    parser.add_argument("--per_device_batch_size", type=int, default=64)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--max_steps", type=int, default=None, help="optimizer steps (default: --num_epochs)")
    parser.add_argument("--num_epochs", type=float, default=1.0)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoint_dir", default=None,
                        help="training state (default: <output_dir>-checkpoints, never inside the Hub folder)")
    parser.add_argument("--checkpoints_total_limit", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    parser.add_argument("--log_every", type=int, default=25)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--seed", type=int, default=0)
    args, _ = parser.parse_known_args(argv)
    if args.config:
        parser.set_defaults(**json.loads(Path(args.config).read_text()))
    args = parser.parse_args(argv)
    args.tokenizer_dir = args.tokenizer_dir or args.init_from
    if not args.tokenizer_dir:
        parser.error("give --tokenizer_dir, or --init_from a checkpoint that holds its tokenizer")
    if args.lora_rank and not args.init_from:
        parser.error("--lora_rank adapts a pretrained model: give --init_from")
    return args


@torch.no_grad()
def build_model(args: argparse.Namespace, tokenizer: RecBaseTokenizer) -> torch.nn.Module:
    """A new model of ``--preset``, or the ``--init_from`` checkpoint, wrapped in LoRA when ``--lora_rank`` > 0."""
    if args.init_from:
        model = RecBaseForCausalLM.from_pretrained(args.init_from)
        check_model_config(tokenizer, model.config, args.tokenizer_dir)
        if model.config.code_score_domains is not None:  # trained on these domains now too
            model.config.code_score_domains = sorted(set(model.config.code_score_domains) | set(args.domains))
    else:
        content = args.content_inputs or args.dense_head
        args.popularity_buckets *= args.dense_head  # the buckets bias the dense head's scores
        if content and tokenizer.quantizer is None:
            raise ValueError(f"{args.tokenizer_dir}: --content_inputs and --dense_head need a tokenizer with its quantizer")
        config = RecBaseConfig.from_preset(
            args.preset, codebook_sizes=tokenizer.codebook_sizes, disambiguation_size=tokenizer.disambiguation_size,
            latent_dim=tokenizer.quantizer.config["latent_dim"] if content else 0, content_inputs=args.content_inputs,
            item_vector_size=tokenizer.item_vector_size if args.dense_head else 0,
            dense_head=args.dense_head, dense_loss_weight=args.dense_loss_weight,
            code_score_weight=float(not args.dense_head) if args.code_score_weight is None else args.code_score_weight,
            code_score_domains=list(args.domains), dense_temperature=args.dense_temperature,
            dense_history_items=args.dense_history_items,
            dense_history_decay=args.dense_history_decay,
            calibrated_code_score=args.calibrated_code_score, popularity_buckets=args.popularity_buckets,
            max_history_items=args.max_items, embedding_dropout=args.embedding_dropout, residual_dropout=args.residual_dropout,
            attention_dropout=args.attention_dropout)
        check_model_config(tokenizer, config, args.tokenizer_dir)
        model = RecBaseForCausalLM(config)
        if content:
            model.model.code_latents.weight.copy_(tokenizer.code_latent_table(config.vocab_size))
        if args.embedding_init == "codebooks":
            init_concept_embeddings_from_codebooks(model, tokenizer, args.seed)
    if args.freeze_concept_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied: the output head stays fixed too
    model.generation_config.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id, max_new_tokens=tokenizer.tokens_per_item)
    if args.lora_rank:
        # task_type makes the adapter record a transformers class, so AutoPeftModelForCausalLM can load it.
        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
            lora_dropout=args.lora_dropout, target_modules=list(args.lora_target_modules)))
    return model


@torch.no_grad()
def init_concept_embeddings_from_codebooks(model: RecBaseForCausalLM, tokenizer: RecBaseTokenizer, seed: int) -> None:
    """Start the embedding of code k of level l at ``P @ codebook_l[k]``, one random orthonormal map P (latent ->
    hidden) for all levels, each level rescaled to the norm of a default-initialised row.

    Codes that are close in the quantizer's latent space then start close for the model, and that geometry is
    the same in every domain, new ones included: with tied embeddings, "the next item resembles the last
    ones" becomes a rule the model can carry into a domain it never saw. Disambiguation codes stay random.
    Measured (recbase-small, 4 epochs, ``benchmarks/results/gpu/embedding-init-*.md``): zero-shot AUC +0.006
    on Office and +0.005 on ML-100k, in-domain Recall@10 -0.010 on Beauty; so it is off by default.
    """
    if tokenizer.quantizer is None:
        raise ValueError("--embedding_init codebooks needs a tokenizer that holds its quantizer")
    weight = model.get_input_embeddings().weight  # (vocab, hidden)
    latent_dim, hidden = tokenizer.quantizer.config["latent_dim"], weight.shape[1]
    if latent_dim > hidden:
        raise ValueError(f"--embedding_init codebooks needs hidden_size >= the quantizer's latent size {latent_dim}")
    generator = torch.Generator().manual_seed(seed)
    projection, _ = torch.linalg.qr(torch.randn(hidden, latent_dim, generator=generator))  # (hidden, latent)
    row_norm = model.config.initializer_range * hidden**0.5
    for level, codebook in enumerate(tokenizer.quantizer.codebooks):
        vectors = codebook.detach().float() @ projection.T  # (codes, hidden)
        first = tokenizer.codes_to_token_ids([0] * (level + 1))[level]
        weight[first : first + len(vectors)] = (vectors * row_norm / vectors.norm(dim=-1).mean()).to(weight.dtype)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    checkpoint_dir = Path(args.checkpoint_dir or f"{output_dir}-checkpoints")
    trackers: list = [JsonlTracker(output_dir / "logs" / "train_log.jsonl")]
    if importlib.util.find_spec("tensorboard") is not None:
        trackers.append("tensorboard")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers,
        project_dir=str(output_dir / "logs"),
    )
    set_seed(args.seed)

    tokenizer = RecBaseTokenizer.from_pretrained(args.tokenizer_dir)
    model = build_model(args, tokenizer)
    with accelerator.main_process_first():
        interactions_all = load_corpus(args.corpus_dir)["interactions"]
        missing = sorted(set(args.domains + args.validation_domains) - set(interactions_all.unique("domain")))
        if missing:
            raise ValueError(f"{args.corpus_dir}: no interactions for domains {missing}")
        interactions = interactions_all.filter(lambda d: d in set(args.domains), input_columns="domain")
        histories = leave_one_out(to_sequences(interactions))["train"]["items"]
        popularity_buckets = model.config.popularity_buckets
        if popularity_buckets:  # the pretraining domains' own catalogue counts, from their training part
            tokenizer.set_item_counts(Counter(key for history in histories for key in history))
        train_dataset = training_windows(tokenizer, histories, args.max_items, popularity_buckets)
    # Windows range from 2 items to --max_items: batches of similar lengths waste little on padding
    # (on the bundled corpus, shuffled batches of 64 were 65% padding).
    sampler = LengthGroupedSampler([len(ids) for ids in train_dataset["input_ids"]], args.per_device_batch_size, args.seed)
    dense = model.config.dense_head
    collator = PretrainingCollator(tokenizer, args.relabel_share, args.num_negatives if dense else 0, popularity_buckets,
                                   seed=args.seed + accelerator.process_index)
    train_dataloader = DataLoader(train_dataset, batch_size=args.per_device_batch_size, sampler=sampler, collate_fn=collator)

    # Decay only the projection matrices: norms, biases and the (tied) concept-token embeddings are left
    # alone, since decaying rarely seen codes' embeddings pulls them to zero between their updates.
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    # The dense head's residual gets its own (smaller) learning rate: at the decoder's, it outgrows the prior it
    # corrects within the warmup and held-out validation falls (see benchmarks/results/selection.md).
    no_decay_names = {name for name, p in trainable if p.ndim < 2 or "embed_tokens" in name}
    dense_head_params = [p for name, p in trainable if "dense_proj" in name]
    decay = [p for name, p in trainable if name not in no_decay_names and "dense_proj" not in name]
    no_decay = [p for name, p in trainable if name in no_decay_names]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if dense_head_params:
        groups.append({"params": dense_head_params, "weight_decay": args.weight_decay,
                       "lr": args.dense_head_learning_rate or args.learning_rate})
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.98))
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    # Recompute after prepare: sharding across processes changes the number of batches per epoch.
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_steps = args.max_steps or math.ceil(args.num_epochs * steps_per_epoch)
    scheduler = accelerator.prepare(get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, max_steps // 10 + 1), max_steps))
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    # Trackers such as TensorBoard take scalars only: lists (domains, LoRA modules) are logged as text.
    accelerator.init_trackers("recbase_pretrain", config={
        k: v if isinstance(v, (int, float, str, bool)) else " ".join(map(str, v)) for k, v in vars(args).items() if v is not None})

    resume_path = latest_checkpoint(checkpoint_dir) if args.resume_from_checkpoint == "latest" else args.resume_from_checkpoint
    if resume_path:
        accelerator.load_state(str(resume_path))
        accelerator.print(f"resumed from {resume_path} at step {progress.completed_steps}")

    validation_sets = [build_evaluation_set(interactions_all, domain, tokenizer.domain_items(domain), "validation",
                                            args.validation_users, args.validation_negatives, args.seed) for domain in args.validation_domains]
    selector = CheckpointSelector(args.validation_metric, args.early_stopping_patience)

    def validate() -> None:
        """Score the validation users; keep a copy of the weights when they are the best so far."""
        unwrapped = accelerator.unwrap_model(model)
        scores = validation_metrics(unwrapped, tokenizer, validation_sets, args.max_items,
                                    full_ranking=args.validation_metric in ("ndcg@10", "recall@10"))
        selector.update(progress.completed_steps, scores, unwrapped)
        accelerator.log({f"validation_{name}": value for name, value in scores.items()}, step=progress.completed_steps)
        accelerator.print(f"step {progress.completed_steps}: validation {args.validation_metric} "
                          f"{scores[args.validation_metric]:.4f} (best {selector.best_score:.4f} at step {selector.best_step})")
        model.train()

    if validation_sets and progress.completed_steps == 0:
        validate()  # step 0: with zero-initialised dense head, the prior itself
    model.train()
    bar = tqdm(total=max_steps, initial=progress.completed_steps, disable=not accelerator.is_local_main_process, desc="pretraining")
    window_tokens, window_start = 0, time.perf_counter()
    while progress.completed_steps < max_steps:
        # Accumulation syncs at the end of every epoch, so an epoch is steps_per_epoch optimizer steps.
        epoch, step_in_epoch = divmod(progress.completed_steps, steps_per_epoch)
        micro_step = step_in_epoch * args.gradient_accumulation_steps
        train_dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_dataloader, micro_step) if micro_step else train_dataloader
        for batch in batches:
            with accelerator.accumulate(model):
                output = model(**batch)
                loss = output.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            window_tokens += int((batch["labels"] != -100).sum())
            if not accelerator.sync_gradients:
                continue
            progress.completed_steps += 1
            bar.update(1)
            if progress.completed_steps % args.log_every == 0 or progress.completed_steps == max_steps:
                elapsed = time.perf_counter() - window_start
                tokens = accelerator.reduce(torch.tensor(window_tokens, device=accelerator.device), reduction="sum").item()
                parts = {name: value.item() for name in ("code_loss", "dense_loss") if (value := getattr(output, name)) is not None}
                accelerator.log({"loss": loss.item(), **parts, "learning_rate": scheduler.get_last_lr()[0],
                                 "tokens_per_second": tokens / elapsed, "epoch": epoch}, step=progress.completed_steps)
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / elapsed:.0f}")
                window_tokens, window_start = 0, time.perf_counter()
            if validation_sets and (progress.completed_steps % args.validate_every == 0 or progress.completed_steps == max_steps):
                validate()
            if progress.completed_steps % args.checkpointing_steps == 0 or progress.completed_steps == max_steps:
                save_checkpoint(accelerator, checkpoint_dir, progress.completed_steps, args.checkpoints_total_limit)
            if progress.completed_steps >= max_steps or selector.should_stop:
                break
        if selector.should_stop:
            accelerator.print(f"early stopping at step {progress.completed_steps}: {selector.patience} validations "
                              f"without a better {args.validation_metric}")
            break
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if validation_sets:
            final.load_state_dict(selector.best_state)
            write_json_atomically(output_dir / "validation.json", selector.summary())
            accelerator.print(f"kept step {selector.best_step} (validation {args.validation_metric} {selector.best_score:.4f})")
        save_hub_folder(final.merge_and_unload() if args.merge_lora and args.lora_rank else final, tokenizer, output_dir)
    accelerator.end_training()
    return output_dir


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int, total_limit: int) -> None:
    """save_state into a temp folder renamed into place, so a kill mid-save leaves no half checkpoint."""
    final = checkpoint_dir / f"step_{step}"
    staging = checkpoint_dir / f".tmp_step_{step}"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        for _, old in sorted((int(p.name.split("_")[1]), p) for p in checkpoint_dir.glob("step_*"))[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_hub_folder(model: RecBaseForCausalLM | PeftModel, tokenizer: RecBaseTokenizer, output_dir: Path) -> None:
    """Weights, config (with ``auto_map`` and ``custom_pipelines``), generation config, tokenizer and shipped code
    (model, tokenizer and pipeline); for a LoRA, the adapter and the tokenizer. Written to a staging folder
    first and then moved file by file into ``output_dir`` (each move is atomic)."""
    staging = output_dir / ".staging"
    if staging.exists():
        shutil.rmtree(staging)
    if isinstance(model, PeftModel):
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    else:
        NextItemGenerationPipeline(model=model, tokenizer=tokenizer).save_pretrained(staging)
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()


if __name__ == "__main__":
    main()
