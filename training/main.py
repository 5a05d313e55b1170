"""The main job: from the bundled raw data to a pretrained, evaluated RecBase, end to end.

    python -m training.main                                  # recbase-tiny on 2 CPU cores
    python -m training.main --preset recbase-small --num_epochs 5 --per_device_batch_size 256 \
        --learning_rate 1e-3 --mixed_precision bf16 --eval_max_users 0 --eval_batch_size 128     # on a GPU

1. Build the corpus of all domains (Parquet) from ``data/``.
2. Fit the item tokenizer on the pretraining domains (every bundled domain but the zero-shot ones) and give
   the zero-shot domains (Office, ML-100k) IDs with ``add_items`` alone.
3. Pretrain on the pretraining domains' training sequences (``training.pretrain.train``, with its default
   recipe; every ``training.pretrain`` model and training setting is a flag here too).
4. Evaluate in-domain on Beauty and zero-shot on Office and ML-100k, with both protocols and the baselines (and,
   on Beauty, SASRec trained on Beauty alone, ``--sasrec_*`` flags); when the model has popularity buckets, also
   "zero-shot + catalogue counts", reported apart.

Writes the Hub-ready folder to ``--output_dir`` (weights, config, tokenizer with every indexed item, shipped
code, pipeline), with ``eval_results.json``/``.md``, ``item_tokenizer_report.json`` and the model card
(``README.md`` with ``training_loss.svg`` and ``code_usage.svg``) beside them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from model_cards.generate import write_model_card
from training import pretrain
from training.arguments import (
    DataArguments,
    EvaluationArguments,
    ItemTokenizerArguments,
    MainJobArguments,
    ModelArguments,
    PretrainingArguments,
    QuantizerFitConfig,
    SASRecArguments,
    parse_arguments,
)
from training.checkpoint import write_json_atomically, write_text_atomically
from training.corpus import build_corpus, load_corpus
from training.evaluate import evaluate
from training.fit_item_tokenizer import fit_item_tokenizer, report_markdown
from training.protocols import RECBASE_WITH_COUNTS, SASREC, all_results_markdown
from training.sasrec import evaluate_sasrec
from training.splits import split_domains

DEFAULT_OUTPUT_DIR = "outputs/recbase-tiny"
# The main job's own defaults: the evaluation samples 2,000 users per domain (--eval_max_users 0: all).
MAIN_JOB_DEFAULTS = {"output_dir": DEFAULT_OUTPUT_DIR, "eval_max_users": 2000}


def stage(number: int, title: str) -> None:
    """A header for each step of the main job, so that a reader of its log knows where it is."""
    print(f"\n=== [{number}/4] {title} ===", flush=True)


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"1 x {torch.cuda.get_device_name()}"
    return f"CPU ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> dict:
    job, vocabulary, model_args, train_args, evaluation, sasrec_args = parse_arguments(
        (
            MainJobArguments,
            ItemTokenizerArguments,
            ModelArguments,
            PretrainingArguments,
            (EvaluationArguments, "eval_"),
            (SASRecArguments, "sasrec_"),
        ),
        argv,
        __doc__,
        defaults=MAIN_JOB_DEFAULTS,
    )
    started = time.perf_counter()
    output_dir = Path(train_args.output_dir)
    work_dir = Path(job.work_dir or f"{output_dir}-work")
    pretrain_domains, zero_shot_domains = split_domains(job.domains, job.zero_shot)

    stage(1, f"corpus of {len(job.domains)} domains from {job.data_dir}")
    corpus_dir = build_corpus(job.domains, work_dir / "corpus", data_dir=job.data_dir)
    stage(
        2, f"item tokenizer: embedding, quantizer fit on {len(pretrain_domains)} domains, IDs for {zero_shot_domains}"
    )
    tokenizer, report = fit_item_tokenizer(
        load_corpus(corpus_dir)["items"],
        pretrain_domains,
        zero_shot_domains,
        QuantizerFitConfig(codebook_sizes=vocabulary.codebook_sizes, seed=train_args.seed),
        vocabulary.disambiguation_size,
        vocabulary.text_encoder,
        cache_dir=job.cache_dir,
    )
    tokenizer_dir = work_dir / "item-tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    print(report_markdown(report))

    stage(3, f"pretraining {model_args.preset} on {pretrain_domains}")
    # Checkpoint selection on the pretraining domains' own validation users (their validation split is never
    # trained on), unless the command line names other validation domains.
    train_args.validation_domains = train_args.validation_domains or pretrain_domains
    data = DataArguments(
        corpus_dir=str(corpus_dir),
        domains=pretrain_domains,
        tokenizer_dir=str(tokenizer_dir),
        max_history_items=job.max_history_items,
    )
    pretrain.train(data, model_args, train_args)
    write_json_atomically(output_dir / "item_tokenizer_report.json", report)

    stage(4, f"evaluation: {job.in_domain_eval} in-domain, {zero_shot_domains} zero-shot, with the baselines")
    evaluation = dataclasses.replace(
        evaluation,
        checkpoint=str(output_dir),
        corpus_dir=str(corpus_dir),
        cache_dir=job.cache_dir,
        domains=job.in_domain_eval + zero_shot_domains,
        zero_shot=zero_shot_domains,
    )
    results = evaluate(evaluation)
    corpus, sasrec_training = load_corpus(corpus_dir), {}
    for domain in job.in_domain_eval:  # the in-domain yardstick: SASRec trained on that domain alone, same users
        metrics, sasrec_training[domain] = evaluate_sasrec(
            corpus, domain, tokenizer.domain_items(domain), sasrec_args, evaluation
        )
        results["domains"][domain]["models"][SASREC] = metrics
    if zero_shot_domains and model_args.popularity_buckets and model_args.dense_head:
        # A separate setting, never mixed into the pure zero-shot rows: the model is given each zero-shot
        # domain's item counts (from that domain's training part, as popularity is), with no training.
        results["with_catalogue_counts"] = evaluate(
            dataclasses.replace(
                evaluation, domains=zero_shot_domains, model_name=RECBASE_WITH_COUNTS, catalogue_counts=True
            )
        )
    results["run"] = {
        **vars(job),
        **vars(vocabulary),
        **vars(model_args),
        **vars(train_args),
        "evaluation": vars(evaluation),
        "sasrec": vars(sasrec_args),
        "sasrec_training": sasrec_training,
        "pretrain_domains": pretrain_domains,
        "hardware": hardware_description(),
        "seconds": time.perf_counter() - started,
    }
    write_json_atomically(output_dir / "eval_results.json", results)
    write_text_atomically(output_dir / "eval_results.md", all_results_markdown(results) + "\n")
    write_model_card(output_dir)
    print(all_results_markdown(results))
    print(f"\nfinished in {results['run']['seconds'] / 60:.1f} min; Hub-ready folder: {output_dir}")
    return results


if __name__ == "__main__":
    main()
