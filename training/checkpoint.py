"""Checkpoints in one place: atomic writes, the Hub folder, training state, and loading a folder back.

Every output is written beside its target and then renamed over it, so a kill or an error never leaves a
half-written file or folder:

- ``write_text_atomically`` / ``write_json_atomically``: one file.
- ``replace_folder``: a whole folder; the target is the old folder or the new one, never a mix.
- ``write_hub_folder``: what one uploads (weights, config, tokenizer, shipped code, ``HUB_RUN_FILES``).
- ``save_training_state``: accelerate's state (optimizer, RNG), kept outside the Hub folder.
- ``load_checkpoint``: a full model or a LoRA adapter, with its tokenizer, checked to share one vocabulary.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_recbase import NextItemGenerationPipeline, RankingPolicy, RecBaseForCausalLM
from tokenization_recbase import RecBaseTokenizer, check_model_config

INDEXED_ITEMS_FILE = "indexed_items.json"  # what training.index_items added to a trained folder
# A run's files that travel with the weights in the Hub folder (the model card reads them); a run without
# checkpoint selection has no validation.json, and only a training.index_items folder has INDEXED_ITEMS_FILE.
HUB_RUN_FILES = (
    "eval_results.json",
    "eval_results.md",
    "item_tokenizer_report.json",
    "logs/train_log.jsonl",
    "validation.json",
    INDEXED_ITEMS_FILE,
)
OPTIONAL_RUN_FILES = ("validation.json", INDEXED_ITEMS_FILE)
RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths in one step


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` writes the content; the temp file beside ``path`` is then renamed over it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2))


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step where the OS can (Linux ``renameat2``); False where it cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd = -100  # AT_FDCWD: paths relative to the working directory
    return renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), RENAME_EXCHANGE) == 0


def replace_folder(staging: Path, target: Path) -> None:
    """Move the complete folder ``staging`` to ``target``, replacing what is there.

    Where the OS swaps two folders atomically, a kill at any moment leaves ``target`` either old or new. Elsewhere
    the old folder is first renamed aside (``.<name>.old``): a kill between the two renames leaves no ``target``
    but both complete folders, and the next call puts the old one back before it starts."""
    backup = target.with_name(f".{target.name}.old")
    if backup.exists():
        if target.exists():
            shutil.rmtree(backup)
        else:
            os.replace(backup, target)  # a previous replacement was cut between its two renames
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging)  # it now holds the old folder
        return
    if target.exists():
        os.replace(target, backup)
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


def write_hub_folder(
    model,
    tokenizer: RecBaseTokenizer,
    output_dir: str | Path,
    run_dir: str | Path | None = None,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Write the folder one uploads, as a whole: weights, config (with ``auto_map`` and ``custom_pipelines``),
    generation config, tokenizer and every shipped file (for a LoRA ``PeftModel``: the adapter and the
    tokenizer), then the ``HUB_RUN_FILES`` found in ``run_dir`` (default: ``output_dir`` itself, so a run's
    logs survive the final save), then ``finish(staging)`` (the model card). Returns ``output_dir``."""
    output_dir = Path(output_dir)
    run_dir = Path(run_dir) if run_dir is not None else output_dir
    with writing_lock(output_dir):
        _write_hub_folder(model, tokenizer, output_dir, run_dir, finish)
    return output_dir


@contextlib.contextmanager
def writing_lock(target: Path):
    """Hold the lock on writing ``target`` (a file ``.<name>.lock`` beside it, locked with ``flock``, which the OS
    releases when the process ends, even by a kill); a second writer gets a ValueError saying so."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{target}: another process is writing this folder now; wait for it to finish or write elsewhere"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_hub_folder(model, tokenizer, output_dir: Path, run_dir: Path, finish) -> None:
    staging = output_dir.with_name(f".{output_dir.name}.staging")  # one writer at a time: see writing_lock
    if staging.exists():
        shutil.rmtree(staging)
    if hasattr(model, "peft_config"):
        model.save_pretrained(staging)
        model.get_base_model().ranking_policy.save_pretrained(staging)  # the adapted model's, beside the adapter
        tokenizer.save_pretrained(staging)
    else:  # through the pipeline: the model, the tokenizer, all shipped code and custom_pipelines
        NextItemGenerationPipeline(model=model, tokenizer=tokenizer).save_pretrained(staging)
    for name in HUB_RUN_FILES:
        if (run_dir / name).is_file():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / name, staging / name)
    if finish is not None:
        finish(staging)
    replace_folder(staging, output_dir)


def save_training_state(accelerator, checkpoint_dir: Path, step: int, total_limit: int) -> None:
    """accelerate's ``save_state`` (weights, optimizer, scheduler, RNG) as ``checkpoint_dir/step_<step>``, written
    whole or not at all; only the newest ``total_limit`` are kept."""
    final = checkpoint_dir / f"step_{step}"
    staging = checkpoint_dir / f".tmp_step_{step}"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(staging, final)
        for _, old in sorted((int(p.name.split("_")[1]), p) for p in checkpoint_dir.glob("step_*"))[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def latest_training_state(checkpoint_dir: Path) -> Path | None:
    """The newest ``step_<n>`` folder, or None."""
    steps = sorted(checkpoint_dir.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return steps[-1] if steps else None


def load_checkpoint(checkpoint: str | Path) -> tuple[RecBaseForCausalLM, RecBaseTokenizer]:
    """Model and tokenizer from one saved folder (a full model, or a LoRA adapter on its base model), checked
    to share one vocabulary."""
    checkpoint = Path(checkpoint)
    is_adapter = (checkpoint / "adapter_config.json").is_file()
    for name in ("adapter_config.json" if is_adapter else "config.json", "tokenizer_config.json"):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"{checkpoint / name} is missing: not a RecBase checkpoint folder")
    if is_adapter:
        from peft import AutoPeftModelForCausalLM  # only adapters need peft

        model = AutoPeftModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
        base = model.get_base_model()
        base.ranking_policy = RankingPolicy.from_pretrained(checkpoint, base.config)
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    check_model_config(tokenizer, model.config, str(checkpoint))
    return model, tokenizer
