"""The main job: from the bundled raw data to a pretrained, evaluated RecBase, end to end.

    python -m training.main                                  # recbase-tiny on 2 CPU cores
    python -m training.main --preset recbase-small --num_epochs 5 --per_device_batch_size 256 \
        --learning_rate 1e-3 --mixed_precision bf16 --eval_max_users 0 --eval_batch_size 128     # on a GPU

1. Build the corpus of all domains (Parquet) from ``data/``.
2. Fit the item tokenizer on the pretraining domains (every bundled domain but the zero-shot ones) and give
   the zero-shot domains (Office, ML-100k) IDs with ``add_items`` alone.
3. Pretrain on the pretraining domains' training sequences (``training.pretrain``, with its default recipe;
   any other ``training.pretrain`` flag given here is passed on).
4. Evaluate in-domain on Beauty and zero-shot on Office and ML-100k, with both protocols and the baselines;
   when the model has popularity buckets, also "zero-shot + catalogue counts", reported apart.

Writes the Hub-ready folder to ``--output_dir`` (weights, config, tokenizer with every indexed item, shipped
code, pipeline), with ``eval_results.json``/``.md``, ``item_tokenizer_report.json`` and the model card
(``README.md`` with ``training_loss.svg`` and ``code_usage.svg``) beside them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from transformers import AutoConfig

from model_cards.generate import write_model_card
from training import evaluate as evaluation
from training import pretrain
from training.corpus import BUNDLED_DOMAINS, DEFAULT_DATA_DIR, DEFAULT_ZERO_SHOT_DOMAINS, build_corpus, load_corpus, split_domains
from training.embedding import DEFAULT_CACHE_DIR
from training.atomic import write_json_atomically, write_text_atomically
from training.fit_item_tokenizer import QuantizerFitConfig, fit_item_tokenizer, report_markdown


def stage(number: int, title: str) -> None:
    """A header for each step of the main job, so that a reader of its log knows where it is."""
    print(f"\n=== [{number}/4] {title} ===", flush=True)


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"1 x {torch.cuda.get_device_name()}"
    return f"CPU ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/recbase-tiny")
    parser.add_argument("--work_dir", default=None, help="corpus and tokenizer staging (default: <output_dir>-work)")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--domains", nargs="+", default=list(BUNDLED_DOMAINS))
    parser.add_argument("--zero_shot", nargs="*", default=list(DEFAULT_ZERO_SHOT_DOMAINS))
    parser.add_argument("--in_domain_eval", nargs="*", default=["amazon14_beauty"])
    parser.add_argument("--preset", default="recbase-tiny")
    # TIGER's shape by default on CPU: 3 x 256 codes + disambiguation (the paper's 4 x 1024 is a flag away).
    parser.add_argument("--codebook_sizes", nargs="+", type=int, default=[256, 256, 256])
    parser.add_argument("--disambiguation_size", type=int, default=32)
    # An upper bound: in-domain validation (below) was still rising at 1.8 epochs; early stopping may end sooner.
    parser.add_argument("--num_epochs", type=float, default=1.5)
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--per_device_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--max_items", type=int, default=20)
    # Checkpoint selection on the pretraining domains' own validation users (their validation split is never
    # trained on): every --validate_every steps, NDCG@10 of the full ranking as in evaluation; the best step
    # is saved, and --early_stopping_patience validations without a new best end the run.
    parser.add_argument("--validation_users", type=int, default=500, help="validation users per pretraining domain")
    parser.add_argument("--validate_every", type=int, default=500)
    parser.add_argument("--early_stopping_patience", type=int, default=3)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--eval_batch_size", type=int, default=16, help="users per beam-search batch")
    parser.add_argument("--eval_max_users", type=int, default=2000, help="users sampled per domain (0: all)")
    parser.add_argument("--num_beams", type=int, default=20)
    parser.add_argument("--exclude_history", action=argparse.BooleanOptionalAction, default=True,
                        help="full rankings leave out the user's history items (as the pipeline does)")
    parser.add_argument("--seed", type=int, default=0)
    # Any other flag is a training.pretrain flag (the recipe: --dense_head, --residual_dropout, ...), passed on.
    args, recipe_flags = parser.parse_known_args(argv)

    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    work_dir = Path(args.work_dir or f"{output_dir}-work")
    pretrain_domains, zero_shot_domains = split_domains(args.domains, args.zero_shot)

    stage(1, f"corpus of {len(args.domains)} domains from {args.data_dir}")
    corpus_dir = build_corpus(args.domains, work_dir / "corpus", data_dir=args.data_dir)
    stage(2, f"item tokenizer: embedding, quantizer fit on {len(pretrain_domains)} domains, IDs for {zero_shot_domains}")
    tokenizer, report = fit_item_tokenizer(
        load_corpus(corpus_dir)["items"], pretrain_domains, zero_shot_domains,
        QuantizerFitConfig(codebook_sizes=args.codebook_sizes, seed=args.seed), args.disambiguation_size,
        cache_dir=args.cache_dir,
    )
    tokenizer_dir = work_dir / "item-tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    print(report_markdown(report))

    pretrain_args = [
        "--corpus_dir", str(corpus_dir), "--tokenizer_dir", str(tokenizer_dir), "--output_dir", str(output_dir),
        "--domains", *pretrain_domains, "--preset", args.preset, "--num_epochs", str(args.num_epochs),
        "--per_device_batch_size", str(args.per_device_batch_size), "--learning_rate", str(args.learning_rate),
        "--max_items", str(args.max_items), "--seed", str(args.seed), "--mixed_precision", args.mixed_precision,
        "--validation_domains", *pretrain_domains, "--validation_users", str(args.validation_users),
        "--validate_every", str(args.validate_every), "--early_stopping_patience", str(args.early_stopping_patience),
        *recipe_flags,
    ] + (["--max_steps", str(args.max_steps)] if args.max_steps else [])
    stage(3, f"pretraining {args.preset} on {pretrain_domains}")
    pretrain.main(pretrain_args)
    write_json_atomically(output_dir / "item_tokenizer_report.json", report)

    stage(4, f"evaluation: {args.in_domain_eval} in-domain, {zero_shot_domains} zero-shot, with the baselines")
    evaluation_options = dict(max_users=args.eval_max_users, num_beams=args.num_beams, batch_size=args.eval_batch_size,
                              max_history_items=args.max_items, cache_dir=args.cache_dir, seed=args.seed,
                              exclude_history=args.exclude_history)
    results = evaluation.evaluate(output_dir, corpus_dir, args.in_domain_eval + zero_shot_domains, zero_shot_domains,
                                  **evaluation_options)
    if zero_shot_domains and AutoConfig.from_pretrained(output_dir, trust_remote_code=True).popularity_buckets:
        # A separate setting, never mixed into the pure zero-shot rows: the model is given each zero-shot
        # domain's item counts (from that domain's training part, as popularity is), with no training.
        results["with_catalogue_counts"] = evaluation.evaluate(
            output_dir, corpus_dir, zero_shot_domains, zero_shot_domains, model_name="RecBase + catalogue counts",
            catalogue_counts=True, **evaluation_options)
    results["run"] = {**vars(args), "recipe_flags": recipe_flags, "pretrain_domains": pretrain_domains, "hardware": hardware_description(),
                      "seconds": time.perf_counter() - started}
    write_json_atomically(output_dir / "eval_results.json", results)
    write_text_atomically(output_dir / "eval_results.md", evaluation.all_results_markdown(results) + "\n")
    write_model_card(output_dir)
    print(evaluation.all_results_markdown(results))
    print(f"\nfinished in {results['run']['seconds'] / 60:.1f} min; Hub-ready folder: {output_dir}")
    return results


if __name__ == "__main__":
    main()
