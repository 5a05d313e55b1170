"""Adapt a pretrained RecBase to a new domain: zero-shot vs LoRA vs full fine-tuning, in one table.

    python -m training.adapt --base outputs/recbase-tiny --corpus_dir outputs/recbase-tiny-work/corpus \\
        --domains amazon18_office ml-100k --output_dir outputs/adapt

For each domain (its items already indexed in the base checkpoint's tokenizer, e.g. by ``add_items``):

1. zero-shot: the base model as it is, with the baselines (text similarity, popularity, random);
2. LoRA: a PEFT adapter (``--lora_rank``, ``--lora_target_modules``) trained on the domain's training
   sequences, saved next to the tokenizer in ``<output_dir>/<domain>/lora`` (``--merge_lora True`` saves the merged
   model instead); it loads with ``AutoPeftModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``;
3. full fine-tuning: every weight trained on the same sequences with the same schedule.

All are evaluated on the same test users with both protocols; ``<output_dir>/adapt_results.{json,md}`` also
give each adapter's file size and trainable-parameter share.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from peft import AutoPeftModelForCausalLM

from training import pretrain
from training.arguments import (
    AdaptArguments,
    DataArguments,
    EvaluationArguments,
    ModelArguments,
    PretrainingArguments,
    parse_arguments,
)
from training.checkpoint import write_json_atomically, write_text_atomically
from training.evaluate import evaluate
from training.protocols import RECBASE, results_markdown

RECBASE_ZERO_SHOT, RECBASE_LORA, RECBASE_FULL = (
    f"{RECBASE} zero-shot",
    f"{RECBASE} + LoRA",
    f"{RECBASE} full fine-tune",
)
ADAPT_DEFAULTS = {"eval_max_users": 2000}  # test users sampled per domain (--eval_max_users 0: all)


def trainable_share(adapter_dir: Path) -> dict:
    """Adapter file size and its parameters as a share of the base model's."""
    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, trust_remote_code=True)
    adapter = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    total = sum(p.numel() for p in model.parameters())
    return {
        "adapter_parameters": adapter,
        "base_parameters": total - adapter,
        "trainable_share": adapter / (total - adapter),
        "adapter_bytes": (adapter_dir / "adapter_model.safetensors").stat().st_size,
    }


def main(argv: list[str] | None = None) -> dict:
    args, evaluation_args = parse_arguments(
        (AdaptArguments, (EvaluationArguments, "eval_")), argv, __doc__, defaults=ADAPT_DEFAULTS
    )
    output_dir = Path(args.output_dir)
    results = {
        "base": str(args.base),
        "domains": {},
        "adapters": {},
        "run": vars(args),
        "evaluation": vars(evaluation_args),
    }
    for domain in args.domains:
        evaluation = dataclasses.replace(
            evaluation_args,
            checkpoint=args.base,
            corpus_dir=args.corpus_dir,
            domains=[domain],
            zero_shot=args.domains,
            model_name=RECBASE_ZERO_SHOT,
        )
        entry = {**evaluate(evaluation)["domains"][domain], "role": "new domain"}
        data = DataArguments(corpus_dir=args.corpus_dir, domains=[domain])
        runs = {
            RECBASE_LORA: (
                output_dir / domain / "lora",
                ModelArguments(
                    init_from=args.base,
                    lora_rank=args.lora_rank,
                    lora_target_modules=args.lora_target_modules,
                    merge_lora=args.merge_lora,
                ),
                args.lora_learning_rate,
            ),
            RECBASE_FULL: (output_dir / domain / "full", ModelArguments(init_from=args.base), args.full_learning_rate),
        }
        for name, (run_dir, model_args, learning_rate) in runs.items():
            pretrain.train(
                data,
                model_args,
                PretrainingArguments(
                    output_dir=str(run_dir),
                    num_epochs=args.num_epochs,
                    per_device_batch_size=args.per_device_batch_size,
                    learning_rate=learning_rate,
                    warmup_steps=args.warmup_steps,
                    seed=args.seed,
                ),
            )
            adapted = evaluate(
                dataclasses.replace(evaluation, checkpoint=str(run_dir), model_name=name, baselines=False)
            )
            entry["models"][name] = adapted["domains"][domain]["models"][name]
        if not args.merge_lora:
            results["adapters"][domain] = trainable_share(runs[RECBASE_LORA][0])
        results["domains"][domain] = entry
    write_json_atomically(output_dir / "adapt_results.json", results)
    markdown = (
        results_markdown(results)
        + "\n\n| domain | LoRA parameters | share of base | adapter file |\n|---|---|---|---|\n"
    )
    markdown += "".join(
        f"| {domain} | {a['adapter_parameters']:,} | {a['trainable_share']:.2%} "
        f"| {a['adapter_bytes'] / 1024:.0f} KiB |\n"
        for domain, a in results["adapters"].items()
    )
    write_text_atomically(output_dir / "adapt_results.md", markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
