"""Adapt a pretrained RecBase to a new domain: zero-shot vs LoRA vs full fine-tuning, in one table.

    python -m training.adapt --base outputs/recbase-tiny --corpus_dir outputs/recbase-tiny-work/corpus \\
        --domains amazon18_office ml-100k --output_dir outputs/adapt

For each domain (its items already indexed in the base checkpoint's tokenizer, e.g. by ``add_items``):

1. zero-shot: the base model as it is, with the baselines (text similarity, popularity, random);
2. LoRA: a PEFT adapter (``--lora_rank``, ``--lora_target_modules``) trained on the domain's training
   sequences, saved next to the tokenizer in ``<output_dir>/<domain>/lora`` (``--merge_lora`` saves the merged
   model instead); it loads with ``AutoPeftModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``;
3. full fine-tuning: every weight trained on the same sequences with the same schedule.

All are evaluated on the same test users with both protocols; ``<output_dir>/adapt_results.{json,md}`` also
give each adapter's file size and trainable-parameter share.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peft import AutoPeftModelForCausalLM

from training import evaluate as evaluation
from training import pretrain
from training.atomic import write_json_atomically, write_text_atomically
from training.embedding import DEFAULT_CACHE_DIR


def trainable_share(adapter_dir: Path) -> dict:
    """Adapter file size and its parameters as a share of the base model's."""
    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, trust_remote_code=True)
    adapter = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    total = sum(p.numel() for p in model.parameters())
    return {"adapter_parameters": adapter, "base_parameters": total - adapter, "trainable_share": adapter / (total - adapter),
            "adapter_bytes": (adapter_dir / "adapter_model.safetensors").stat().st_size}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the pretrained checkpoint (its tokenizer indexes the domains)")
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--domains", nargs="+", required=True)
    parser.add_argument("--output_dir", default="outputs/adapt")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--lora_target_modules", nargs="+", default=list(pretrain.LORA_TARGET_MODULES))
    parser.add_argument("--merge_lora", action="store_true")
    parser.add_argument("--num_epochs", type=float, default=3.0)
    parser.add_argument("--lora_learning_rate", type=float, default=2e-3)
    parser.add_argument("--full_learning_rate", type=float, default=5e-4)
    parser.add_argument("--per_device_batch_size", type=int, default=64)
    parser.add_argument("--eval_max_users", type=int, default=2000)
    parser.add_argument("--negatives", type=int, default=20, help="sampled negatives per user for candidate scoring")
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    output_dir = Path(args.output_dir)
    common_eval = dict(zero_shot_domains=args.domains, max_users=args.eval_max_users, negatives=args.negatives,
                       batch_size=args.eval_batch_size, cache_dir=args.cache_dir, seed=args.seed)
    results = {"base": str(args.base), "domains": {}, "adapters": {}, "run": vars(args)}
    for domain in args.domains:
        zero_shot = evaluation.evaluate(args.base, args.corpus_dir, [domain], model_name="RecBase zero-shot", **common_eval)
        entry = {**zero_shot["domains"][domain], "role": "new domain"}
        common_train = ["--init_from", str(args.base), "--corpus_dir", str(args.corpus_dir), "--domains", domain,
                        "--num_epochs", str(args.num_epochs), "--per_device_batch_size", str(args.per_device_batch_size),
                        "--seed", str(args.seed), "--warmup_steps", "20"]
        runs = {
            "RecBase + LoRA": (output_dir / domain / "lora", ["--lora_rank", str(args.lora_rank), "--lora_target_modules",
                               *args.lora_target_modules, "--learning_rate", str(args.lora_learning_rate)]
                               + (["--merge_lora"] if args.merge_lora else [])),
            "RecBase full fine-tune": (output_dir / domain / "full", ["--learning_rate", str(args.full_learning_rate)]),
        }
        for name, (run_dir, extra) in runs.items():
            pretrain.main(common_train + ["--output_dir", str(run_dir)] + extra)
            adapted = evaluation.evaluate(run_dir, args.corpus_dir, [domain], model_name=name, baselines=False, **common_eval)
            entry["models"][name] = adapted["domains"][domain]["models"][name]
        if not args.merge_lora:
            results["adapters"][domain] = trainable_share(runs["RecBase + LoRA"][0])
        results["domains"][domain] = entry
    write_json_atomically(output_dir / "adapt_results.json", results)
    markdown = evaluation.results_markdown(results) + "\n\n| domain | LoRA parameters | share of base | adapter file |\n|---|---|---|---|\n"
    markdown += "".join(f"| {domain} | {a['adapter_parameters']:,} | {a['trainable_share']:.2%} | {a['adapter_bytes'] / 1024:.0f} KiB |\n"
                        for domain, a in results["adapters"].items())
    write_text_atomically(output_dir / "adapt_results.md", markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
