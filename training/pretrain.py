"""Cross-domain pretraining of RecBase with Accelerate (the shape of transformers' ``no_trainer`` examples).

Each user's training history (leave-one-out: the last two items are held out) becomes ``<bos>`` followed by
its items' concept tokens, cut into windows of at most ``--max_history_items`` items; the loss is next-token
prediction over every concept token. The same script runs unchanged:

    python -m training.pretrain --corpus_dir C --tokenizer_dir T --output_dir O          # CPU or one GPU
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m training.pretrain ...              # two CPU processes
    accelerate launch --config_file training/accelerate_configs/ddp.yaml -m training.pretrain ...  # GPUs

``--init_from CHECKPOINT`` fine-tunes a saved model instead of starting from scratch, and ``--lora_rank R``
trains a LoRA adapter on it instead (PEFT; the output folder then holds the adapter and the tokenizer, or
the merged model with ``--merge_lora True``). The settings are the dataclasses of ``training.arguments``;
``--config file.json`` sets any of them, and flags given on the command line win. Checkpoints (model, optimizer,
scheduler, RNG and step) go to ``--checkpoint_dir`` (default
``<output_dir>-checkpoints``, outside the folder one uploads: they hold pickled optimizer state) as ``step_<n>``
every ``--checkpointing_steps``; ``--resume_from_checkpoint latest`` continues exactly where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from model_cards.generate import build_lora_card
from modeling_recbase import RecBaseConfig, RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer, check_model_config
from training.arguments import (
    MODEL_CONFIG_FIELDS,
    NEW_MODEL_RERANK_TOP,
    DataArguments,
    ModelArguments,
    PretrainingArguments,
    parse_arguments,
)
from training.checkpoint import (
    latest_training_state,
    save_training_state,
    write_hub_folder,
    write_json_atomically,
    write_text_atomically,
)
from training.corpus import load_corpus
from training.pretraining_data import LengthGroupedSampler, PretrainingCollator, training_windows
from training.protocols import build_evaluation_set
from training.validation import CheckpointSelector, validation_metrics


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


@torch.no_grad()
def build_model(
    data: DataArguments, args: ModelArguments, tokenizer: RecBaseTokenizer, seed: int = 0
) -> torch.nn.Module:
    """A new model of ``preset``, or the ``init_from`` checkpoint, wrapped in LoRA when ``lora_rank`` > 0. Its ranking
    policy gives the code head's score (where it has weight) to the domains it is trained on."""
    if args.init_from:
        model = RecBaseForCausalLM.from_pretrained(args.init_from)
        check_model_config(tokenizer, model.config, data.tokenizer_dir or args.init_from)
        policy = model.ranking_policy
        # None: every domain, and so still every domain. The residual keeps the domains the base's floor kept.
        code_domains, residual_domains = (
            None if known is None else sorted(set(known) | set(data.domains))
            for known in (policy.code_score_domains, policy.residual_domains)
        )
        if args.reset_dense_residual and model.dense_proj is not None:
            model.dense_proj.weight.zero_()
    else:
        content = args.content_inputs or args.dense_head
        if content and tokenizer.quantizer is None:
            raise ValueError(
                f"{data.tokenizer_dir}: --content_inputs and --dense_head need a tokenizer with its quantizer"
            )
        config = RecBaseConfig.from_preset(
            args.preset,
            codebook_sizes=tokenizer.codebook_sizes,
            disambiguation_size=tokenizer.disambiguation_size,
            latent_dim=tokenizer.quantizer.config["latent_dim"] if content else 0,
            item_vector_size=tokenizer.item_vector_size if args.dense_head else 0,
            max_history_items=data.max_history_items,
            **{name: getattr(args, name) for name in MODEL_CONFIG_FIELDS},
        )
        check_model_config(tokenizer, config, data.tokenizer_dir)
        model = RecBaseForCausalLM(config)
        if content:
            model.model.code_latents.weight.copy_(tokenizer.code_latent_table(config.vocab_size))
        if args.embedding_init == "codebooks":
            init_concept_embeddings_from_codebooks(model, tokenizer, seed)
        code_domains = residual_domains = sorted(data.domains)
    # The code head and the dense head's residual count on the domains the model is trained on; elsewhere the dense
    # head's training-free prior ranks (``train`` narrows the residual's domains to those validation says it helps).
    ranking = {"code_score_domains": code_domains, "residual_domains": residual_domains}
    if not args.init_from:
        ranking["whitened_rerank_top"] = NEW_MODEL_RERANK_TOP
    for name in ("whitened_rerank_top", "whitening_power"):  # else a new model's default, or the checkpoint's own
        if getattr(args, name) is not None:
            ranking[name] = getattr(args, name)
    if args.calibrated_code_score:
        ranking["calibrated_code_score"] = True
    if args.code_score_weight is not None:
        ranking["code_score_weight"] = args.code_score_weight
    model.ranking_policy = dataclasses.replace(model.ranking_policy, **ranking)
    model.ranking_policy.check(model.config)
    if args.freeze_concept_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied: the output head stays fixed too
    model.generation_config.update(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=tokenizer.tokens_per_item,
    )
    if args.lora_rank:
        # task_type makes the adapter record a transformers class, so AutoPeftModelForCausalLM can load it.
        model = get_peft_model(
            model,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=args.lora_rank,
                lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                lora_dropout=args.lora_dropout,
                target_modules=list(args.lora_target_modules),
                # The dense head's projection ranks: it trains in full beside the adapter and is saved with it.
                modules_to_save=["dense_proj"] if model.config.dense_head else None,
            ),
        )
    return model


@torch.no_grad()
def init_concept_embeddings_from_codebooks(model: RecBaseForCausalLM, tokenizer: RecBaseTokenizer, seed: int) -> None:
    """Start the embedding of code k of level l at ``P @ codebook_l[k]``, one random orthonormal map P (latent ->
    hidden) for all levels, each level rescaled to the norm of a default-initialised row.

    Codes that are close in the quantizer's latent space then start close for the model, and that geometry is
    the same in every domain, new ones included: with tied embeddings, "the next item resembles the last
    ones" becomes a rule the model can carry into a domain it never saw. Disambiguation codes stay random.
    Off by default: measured in ``benchmarks/results/gpu/embedding-init-*.md``.
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


def helped_domains(history: list[dict], kept_step: int, metric: str, domains: list[str]) -> list[str]:
    """Of ``domains``, those where the residual keeps counting: a domain validated at both the run's start (step 0:
    for a new model, the dense head's training-free prior) and the kept step stays only if ``metric`` rose there; a
    domain not validated at both (or a run without step 0) stays."""
    by_step = {entry["step"]: entry for entry in history}
    start, kept = by_step.get(0, {}), by_step.get(kept_step, {})

    def rose(domain: str) -> bool:
        name = f"{metric}_{domain}"
        return name not in start or name not in kept or kept[name] > start[name]

    return sorted(domain for domain in domains if rose(domain))


def train(data: DataArguments, model_args: ModelArguments, args: PretrainingArguments) -> Path:
    """Pretrain (or fine-tune, or adapt with LoRA) and write the Hub folder ``args.output_dir``; returns it."""
    data = dataclasses.replace(data, tokenizer_dir=data.tokenizer_dir or model_args.init_from)
    if not data.tokenizer_dir:
        raise ValueError("give --tokenizer_dir, or --init_from a checkpoint that holds its tokenizer")
    if model_args.lora_rank and not model_args.init_from:
        raise ValueError("--lora_rank adapts a pretrained model: give --init_from")
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

    tokenizer = RecBaseTokenizer.from_pretrained(data.tokenizer_dir)
    model = build_model(data, model_args, tokenizer, args.seed)
    with accelerator.main_process_first():
        corpus = load_corpus(data.corpus_dir)
        missing = sorted(set(data.domains + args.validation_domains) - set(corpus["train"].unique("domain")))
        if missing:
            raise ValueError(f"{data.corpus_dir}: no interactions for domains {missing}")
        histories = corpus["train"].filter(lambda d: d in set(data.domains), input_columns="domain")["items"]
        popularity_buckets = model.config.popularity_buckets
        if popularity_buckets:  # the pretraining domains' own catalogue counts, from their training part
            tokenizer.set_item_counts(Counter(key for history in histories for key in history))
        train_dataset = training_windows(tokenizer, histories, data.max_history_items, popularity_buckets)
    # Windows range from 2 items to --max_history_items: batches of similar lengths waste little on padding
    # (on the bundled corpus, shuffled batches of 64 were 65% padding).
    sampler = LengthGroupedSampler(
        [len(ids) for ids in train_dataset["input_ids"]], args.per_device_batch_size, args.seed
    )
    dense = model.config.dense_head
    collator = PretrainingCollator(
        tokenizer,
        args.relabel_share,
        args.num_negatives if dense else 0,
        popularity_buckets,
        seed=args.seed + accelerator.process_index,
    )
    train_dataloader = DataLoader(
        train_dataset, batch_size=args.per_device_batch_size, sampler=sampler, collate_fn=collator
    )

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
        groups.append(
            {
                "params": dense_head_params,
                "weight_decay": args.weight_decay,
                "lr": args.dense_head_learning_rate or args.learning_rate,
            }
        )
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.98))
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    # Recompute after prepare: sharding across processes changes the number of batches per epoch.
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_steps = args.max_steps or max(args.min_steps, math.ceil(args.num_epochs * steps_per_epoch))
    scheduler = accelerator.prepare(
        get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, max_steps // 10 + 1), max_steps)
    )
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    # Trackers such as TensorBoard take scalars only: lists (domains, LoRA modules) are logged as text.
    # How the run was distributed goes into the train log with the settings (a multi-process test reads it).
    settings = {
        **vars(data),
        **vars(model_args),
        **vars(args),
        "distributed_type": accelerator.distributed_type.value,
        "num_processes": accelerator.num_processes,
        "backend": accelerator.state.backend or "none",
    }
    accelerator.init_trackers(
        "recbase_pretrain",
        config={
            k: v if isinstance(v, (int, float, str, bool)) else " ".join(map(str, v))
            for k, v in settings.items()
            if v is not None
        },
    )

    resume_path = (
        latest_training_state(checkpoint_dir)
        if args.resume_from_checkpoint == "latest"
        else args.resume_from_checkpoint
    )
    if resume_path:
        accelerator.load_state(str(resume_path))
        accelerator.print(f"resumed from {resume_path} at step {progress.completed_steps}")

    validation_sets = [
        build_evaluation_set(
            corpus,
            domain,
            tokenizer.domain_items(domain),
            "validation",
            args.validation_users,
            args.validation_negatives,
            args.seed,
        )
        for domain in args.validation_domains
    ]
    selector = CheckpointSelector(args.validation_metric, args.early_stopping_patience)

    def validate() -> None:
        """Score the validation users; keep a copy of the weights when they are the best so far."""
        unwrapped = accelerator.unwrap_model(model)
        scores = validation_metrics(
            unwrapped,
            tokenizer,
            validation_sets,
            data.max_history_items,
            full_ranking=args.validation_metric in ("ndcg@10", "recall@10"),
        )
        selector.update(progress.completed_steps, scores, unwrapped)
        accelerator.log({f"validation_{name}": value for name, value in scores.items()}, step=progress.completed_steps)
        accelerator.print(
            f"step {progress.completed_steps}: validation {args.validation_metric} "
            f"{scores[args.validation_metric]:.4f} (best {selector.best_score:.4f} at step {selector.best_step})"
        )
        model.train()

    if validation_sets and progress.completed_steps == 0:
        validate()  # step 0: with zero-initialised dense head, the prior itself
    model.train()
    bar = tqdm(
        total=max_steps,
        initial=progress.completed_steps,
        disable=not accelerator.is_local_main_process,
        desc="pretraining",
    )
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
                tokens = accelerator.reduce(
                    torch.tensor(window_tokens, device=accelerator.device), reduction="sum"
                ).item()
                parts = {
                    name: value.item()
                    for name in ("code_loss", "dense_loss")
                    if (value := getattr(output, name)) is not None
                }
                accelerator.log(
                    {
                        "loss": loss.item(),
                        **parts,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "tokens_per_second": tokens / elapsed,
                        "epoch": epoch,
                    },
                    step=progress.completed_steps,
                )
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / elapsed:.0f}")
                window_tokens, window_start = 0, time.perf_counter()
            if validation_sets and (
                progress.completed_steps % args.validate_every == 0 or progress.completed_steps == max_steps
            ):
                validate()
            if progress.completed_steps % args.checkpointing_steps == 0 or progress.completed_steps == max_steps:
                save_training_state(
                    accelerator, checkpoint_dir, progress.completed_steps, args.checkpoints_total_limit
                )
            if progress.completed_steps >= max_steps or selector.should_stop:
                break
        if selector.should_stop:
            accelerator.print(
                f"early stopping at step {progress.completed_steps}: {selector.patience} validations "
                f"without a better {args.validation_metric}"
            )
            break
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if validation_sets:
            final.load_state_dict(selector.best_state)
            if final.config.dense_head:
                policy = final.ranking_policy
                kept = helped_domains(
                    selector.history,
                    selector.best_step,
                    args.validation_metric,
                    data.domains if policy.residual_domains is None else policy.residual_domains,
                )
                final.ranking_policy = dataclasses.replace(policy, residual_domains=kept)
                accelerator.print(
                    f"the dense head's residual counts on {kept} (validation {args.validation_metric} "
                    "above the run's start there)"
                )
            write_json_atomically(output_dir / "validation.json", selector.summary())
            accelerator.print(
                f"kept step {selector.best_step} (validation {args.validation_metric} {selector.best_score:.4f})"
            )
        adapter = model_args.lora_rank and not model_args.merge_lora
        write_hub_folder(
            final.merge_and_unload() if model_args.merge_lora and model_args.lora_rank else final,
            tokenizer,
            output_dir,
            # PEFT's own card is blank and calls the task text generation: an adapter folder gets RecBase's.
            finish=(
                lambda staging: write_text_atomically(
                    staging / "README.md", str(build_lora_card(staging, name=output_dir.name))
                )
            )
            if adapter
            else None,
        )
    accelerator.end_training()
    return output_dir


def main(argv: list[str] | None = None) -> Path:
    return train(*parse_arguments((DataArguments, ModelArguments, PretrainingArguments), argv, __doc__))


if __name__ == "__main__":
    main()
