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
line win. Checkpoints (model, optimizer, scheduler, RNG and step) go to ``<output_dir>/checkpoints/step_<n>``
every ``--checkpointing_steps``; ``--resume_from_checkpoint latest`` continues exactly where the last one stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import time
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
from tokenization_recbase import RecBaseTokenizer
from training.corpus import leave_one_out, load_corpus, to_sequences

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


def training_windows(tokenizer: RecBaseTokenizer, histories: list[list[str]], max_items: int) -> Dataset:
    """Histories of item keys -> token windows ``<bos> item ... item`` of at most ``max_items`` items.

    A long history is cut from its end backwards, so the most recent items are always in one window and
    every item is trained on once. Histories of one item teach nothing (no next item) and are skipped.
    """
    windows = []
    for history in histories:
        for end in range(len(history), 1, -max_items):
            window = history[max(0, end - max_items) : end]
            if len(window) > 1:
                windows.append(tokenizer.encode_history(window)["input_ids"])
    if not windows:
        raise ValueError("no training sequence has two or more items")
    return Dataset.from_dict({"input_ids": windows})


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
    (and the fast causal kernel is used). Labels are the inputs with pads ignored (-100)."""
    width = max(len(example["input_ids"]) for example in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    for row, example in enumerate(batch):
        input_ids[row, : len(example["input_ids"])] = torch.tensor(example["input_ids"])
    labels = input_ids.masked_fill(input_ids == pad_token_id, -100)
    return {"input_ids": input_ids, "labels": labels}


def check_vocabulary(config: RecBaseConfig, tokenizer: RecBaseTokenizer, where: str) -> None:
    """The model and the tokenizer must agree on the concept vocabulary."""
    if (config.codebook_sizes != tokenizer.codebook_sizes or config.disambiguation_size != tokenizer.disambiguation_size
            or config.vocab_size < len(tokenizer)):
        raise ValueError(
            f"{where}: the tokenizer (codebooks {tokenizer.codebook_sizes}, disambiguation "
            f"{tokenizer.disambiguation_size}, {len(tokenizer)} tokens) does not match the model (codebooks "
            f"{config.codebook_sizes}, disambiguation {config.disambiguation_size}, vocab_size {config.vocab_size})"
        )


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
    parser.add_argument("--per_device_batch_size", type=int, default=64)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--max_steps", type=int, default=None, help="optimizer steps (default: --num_epochs)")
    parser.add_argument("--num_epochs", type=float, default=1.0)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
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


def build_model(args: argparse.Namespace, tokenizer: RecBaseTokenizer) -> torch.nn.Module:
    """A new model of ``--preset``, or the ``--init_from`` checkpoint, wrapped in LoRA when ``--lora_rank`` > 0."""
    if args.init_from:
        model = RecBaseForCausalLM.from_pretrained(args.init_from)
        check_vocabulary(model.config, tokenizer, args.tokenizer_dir)
    else:
        config = RecBaseConfig.from_preset(args.preset, codebook_sizes=tokenizer.codebook_sizes,
                                           disambiguation_size=tokenizer.disambiguation_size)
        check_vocabulary(config, tokenizer, args.tokenizer_dir)
        model = RecBaseForCausalLM(config)
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
    checkpoint_dir = output_dir / "checkpoints"
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
        interactions = load_corpus(args.corpus_dir)["interactions"]
        missing = sorted(set(args.domains) - set(interactions.unique("domain")))
        if missing:
            raise ValueError(f"{args.corpus_dir}: no interactions for domains {missing}")
        interactions = interactions.filter(lambda d: d in set(args.domains), input_columns="domain")
        histories = leave_one_out(to_sequences(interactions))["train"]["items"]
        train_dataset = training_windows(tokenizer, histories, args.max_items)
    # Windows range from 2 items to --max_items: batches of similar lengths waste little on padding
    # (on the bundled corpus, shuffled batches of 64 were 65% padding).
    sampler = LengthGroupedSampler([len(ids) for ids in train_dataset["input_ids"]], args.per_device_batch_size, args.seed)
    train_dataloader = DataLoader(
        train_dataset, batch_size=args.per_device_batch_size, sampler=sampler,
        collate_fn=lambda batch: collate_right_padded(batch, tokenizer.pad_token_id),
    )

    # Decay only the projection matrices: norms, biases and the (tied) concept-token embeddings are left
    # alone, since decaying rarely seen codes' embeddings pulls them to zero between their updates.
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    no_decay_names = {name for name, p in trainable if p.ndim < 2 or "embed_tokens" in name}
    decay = [p for name, p in trainable if name not in no_decay_names]
    no_decay = [p for name, p in trainable if name in no_decay_names]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate, betas=(0.9, 0.98))
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
                loss = model(**batch).loss
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
                accelerator.log({"loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0],
                                 "tokens_per_second": tokens / elapsed, "epoch": epoch}, step=progress.completed_steps)
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / elapsed:.0f}")
                window_tokens, window_start = 0, time.perf_counter()
            if progress.completed_steps % args.checkpointing_steps == 0 or progress.completed_steps == max_steps:
                save_checkpoint(accelerator, checkpoint_dir, progress.completed_steps, args.checkpoints_total_limit)
            if progress.completed_steps >= max_steps:
                break
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
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
