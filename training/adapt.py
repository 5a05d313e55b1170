"""Adapt a pretrained RecBase to a new domain, against training from scratch, in one table per domain and data size.

    python -m training.adapt --base outputs/recbase-tiny --corpus_dir outputs/recbase-tiny-work/corpus \\
        --domains amazon18_office ml-100k --output_dir outputs/adapt \\
        --results_file benchmarks/results/adaptation.json

For each domain (its items already indexed in the base checkpoint's tokenizer, e.g. by ``add_items``) and each
``--train_fractions`` share of its training users (the same sample for every method; ``training.corpus.
sample_training_users``; the test users never change), on the same test users:

1. the base model as it is ("RecBase zero-shot"), its training-free prior, text similarity, popularity, random;
2. "RecBase + LoRA": a PEFT adapter (``--lora_rank``, ``--lora_target_modules``; the dense head's projection, which
   ranks, trains in full beside it) saved with the tokenizer in
   ``<output_dir>/<domain>/<fraction>/lora`` (``--merge_lora True``: the merged model); it loads with
   ``AutoPeftModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``;
3. "RecBase full fine-tune": every weight trained, same schedule;
4. "RecBase from scratch": the same architecture, freshly initialised, trained on the domain alone (what
   pretraining adds is the gap to the adapted rows);
5. SASRec trained on the domain alone (``training.sasrec``).

Adapted runs start the dense head's residual at zero (``--reset_dense_residual``): on a new domain training starts
at the prior. Every RecBase training run keeps its best step by validation NDCG@10 on the domain (step 0 included,
so an adapted model is never below its start on validation). Then the
code head's weight in the scores (concept-ID generation fused with the dense head: constrained beam search proposes
candidates beside the dense shortlist) is chosen among ``--code_score_weights`` and 0 on the domain's validation
split, and saved in the folder's ranking policy (``ranking_config.json``, beside an adapter or a merged model). The
table shows each trained model fused and with the dense head alone. Catalogue counts are given to no RecBase row,
and then to every one (rows named "+ catalogue counts"). Writes ``--results_file`` (``{"runs": [{"domain",
"train_fraction", "models": {name: {"recall@10", "ndcg@10", "auc", "gauc", "train_minutes", ...}}}]}``) and its
``.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM

from modeling_recbase import RANKING_CONFIG_NAME, RankingPolicy
from tokenization_recbase import RecBaseTokenizer
from training import pretrain
from training.arguments import (
    AdaptArguments,
    DataArguments,
    EvaluationArguments,
    ModelArguments,
    PretrainingArguments,
    SASRecArguments,
    parse_arguments,
)
from training.checkpoint import load_checkpoint, write_json_atomically, write_text_atomically
from training.corpus import load_corpus, sample_training_users
from training.evaluate import evaluate
from training.protocols import RECBASE, SASREC
from training.sasrec import evaluate_sasrec

RECBASE_ZERO_SHOT = f"{RECBASE} zero-shot"
RECBASE_LORA = f"{RECBASE} + LoRA"
RECBASE_FULL = f"{RECBASE} full fine-tune"
RECBASE_SCRATCH = f"{RECBASE} from scratch"
DENSE_ONLY = ", dense head only"
WITH_COUNTS = " + catalogue counts"
ADAPT_DEFAULTS = {"eval_max_users": 2000}  # test users sampled per domain (--eval_max_users 0: all)
TABLE_COLUMNS = ("recall@10", "ndcg@10", "auc", "gauc")
NO_COUNTS = {"popularity_bias": False}  # a row without catalogue counts, whatever the tokenizer holds


def adapter_parameters(model) -> int:
    """Parameters an adapter trains: its LoRA matrices and the modules it saves whole (the dense projection)."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name or "modules_to_save" in name)


def trainable_share(adapter_dir: Path) -> dict:
    """Adapter file size and its parameters as a share of the base model's."""
    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, trust_remote_code=True)
    adapter = adapter_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    return {
        "adapter_parameters": adapter,
        "base_parameters": total - adapter,
        "trainable_share": adapter / (total - adapter),
        "adapter_bytes": (adapter_dir / "adapter_model.safetensors").stat().st_size,
    }


def choose_code_weight(
    run_dir: Path, evaluation: EvaluationArguments, weights: list[float], validation_users: int
) -> tuple[float, dict[str, float]]:
    """The code head's weight with the best validation NDCG@10 on the domain (0 and each of ``weights``; a tie goes
    to the smaller), written into ``run_dir``'s ranking policy. Returns it and every weight's NDCG@10."""
    domain = evaluation.domains[0]
    validation = dataclasses.replace(
        evaluation,
        checkpoint=str(run_dir),
        split="validation",
        max_users=validation_users,
        baselines=False,
        catalogue_counts=False,
        model_name=RECBASE,
    )
    ndcg = {}
    for weight in sorted({0.0, *weights}):
        results = evaluate(validation, {**NO_COUNTS, "code_score_weight": weight})
        ndcg[weight] = results["domains"][domain]["models"][RECBASE]["ndcg@10"]
    chosen = max(ndcg, key=lambda weight: (ndcg[weight], -weight))
    policy_path = run_dir / RANKING_CONFIG_NAME
    policy = RankingPolicy(**json.loads(policy_path.read_text(encoding="utf-8")))
    write_json_atomically(policy_path, dataclasses.asdict(dataclasses.replace(policy, code_score_weight=chosen)))
    return chosen, {str(weight): value for weight, value in ndcg.items()}


def parameter_count(checkpoint: Path) -> int:
    """Parameters a run trained: an adapter's, or the whole model's."""
    model, _ = load_checkpoint(checkpoint)
    return adapter_parameters(model) if hasattr(model, "peft_config") else sum(p.numel() for p in model.parameters())


def training_runs(args: AdaptArguments) -> dict[str, tuple[ModelArguments, float, str]]:
    """Each trained RecBase row: its model (the base adapted, or a fresh one), learning rate and folder name."""
    return {
        RECBASE_LORA: (
            ModelArguments(
                init_from=args.base,
                reset_dense_residual=args.reset_dense_residual,
                lora_rank=args.lora_rank,
                lora_target_modules=args.lora_target_modules,
                merge_lora=args.merge_lora,
            ),
            args.lora_learning_rate,
            "lora",
        ),
        RECBASE_FULL: (
            ModelArguments(init_from=args.base, reset_dense_residual=args.reset_dense_residual),
            args.full_learning_rate,
            "full",
        ),
        RECBASE_SCRATCH: (ModelArguments(), args.scratch_learning_rate, "scratch"),
    }


def adapt_run(
    args: AdaptArguments,
    evaluation_args: EvaluationArguments,
    sasrec_args: SASRecArguments,
    domain: str,
    fraction: float,
) -> dict:
    """Every method of the module docstring on ``domain`` with ``fraction`` of its training users: one run."""
    run_root = Path(args.output_dir) / domain / f"train-{fraction:g}"
    corpus_dir = (
        args.corpus_dir
        if fraction == 1
        else str(sample_training_users(args.corpus_dir, domain, fraction, run_root / "corpus", args.seed))
    )
    evaluation = dataclasses.replace(
        evaluation_args, corpus_dir=corpus_dir, domains=[domain], zero_shot=[domain], seed=args.seed
    )

    def evaluated(checkpoint: str, name: str, ranking: dict, counts: bool = False, baselines: bool = False) -> dict:
        """The test users' results (``name``'s, and the baselines' with ``baselines``): the domain's entry."""
        changes = dict(checkpoint=checkpoint, model_name=name, catalogue_counts=counts, baselines=baselines)
        return evaluate(dataclasses.replace(evaluation, **changes), ranking)["domains"][domain]

    def row(checkpoint: str, name: str, ranking: dict, counts: bool = False) -> dict:
        return evaluated(checkpoint, name, ranking, counts)["models"][name]

    zero_shot = evaluated(args.base, RECBASE_ZERO_SHOT, NO_COUNTS, baselines=True)
    models = {name: {**metrics, "train_minutes": 0.0} for name, metrics in zero_shot["models"].items()}
    with_counts = RECBASE_ZERO_SHOT + WITH_COUNTS
    models[with_counts] = {**row(args.base, with_counts, {}, counts=True), "train_minutes": 0.0}
    schedule = {
        "num_epochs": args.num_epochs,
        "min_steps": args.min_steps,
        "per_device_batch_size": args.per_device_batch_size,
        "warmup_steps": args.warmup_steps,
        "dense_head_learning_rate": args.dense_head_learning_rate,
        "seed": args.seed,
        "validation_domains": [domain],
        "validation_metric": "ndcg@10",
        "validation_users": args.validation_users,
        "validation_negatives": evaluation.negatives,
        "validate_every": args.validate_every,
        "early_stopping_patience": args.early_stopping_patience,
    }
    runs = training_runs(args)
    run = {
        "domain": domain,
        "train_fraction": fraction,
        "users": zero_shot["users"],
        "corpus_dir": corpus_dir,
        "models": models,
        "code_head": {},
    }
    for name, (model_args, learning_rate, folder) in runs.items():
        run_dir = run_root / folder
        started = time.perf_counter()
        pretrain.train(
            DataArguments(corpus_dir=corpus_dir, domains=[domain], tokenizer_dir=args.base),
            model_args,
            PretrainingArguments(output_dir=str(run_dir), learning_rate=learning_rate, **schedule),
        )
        minutes = (time.perf_counter() - started) / 60
        weight, validation = choose_code_weight(run_dir, evaluation, args.code_score_weights, args.validation_users)
        run["code_head"][name] = {"chosen_weight": weight, "validation_ndcg@10": validation}
        extra = {
            "train_minutes": minutes,
            "trainable_parameters": parameter_count(run_dir),
            "code_score_weight": weight,
        }
        models[name] = {**row(str(run_dir), name, NO_COUNTS), **extra}
        dense_only = name + DENSE_ONLY
        models[dense_only] = (
            {**models[name], "code_score_weight": 0.0}
            if weight == 0
            else {
                **row(str(run_dir), dense_only, {**NO_COUNTS, "code_score_weight": 0.0}),
                **extra,
                "code_score_weight": 0.0,
            }
        )
        models[name + WITH_COUNTS] = {
            **row(str(run_dir), name + WITH_COUNTS, {}, counts=True),
            **extra,
        }
        if folder == "lora" and not args.merge_lora:
            run["adapter"] = trainable_share(run_dir)

    items = RecBaseTokenizer.from_pretrained(args.base).domain_items(domain)  # evaluate's list: the same candidates
    metrics, run["sasrec"] = evaluate_sasrec(
        load_corpus(corpus_dir), domain, items, dataclasses.replace(sasrec_args, seed=args.seed), evaluation
    )
    models[SASREC] = {**metrics, **{key: run["sasrec"][key] for key in ("train_minutes", "trainable_parameters")}}
    return run


def adaptation_markdown(results: dict) -> str:
    """One table per run (domain, share of training users): every row's metrics, training minutes and trainable
    parameters; then the code head's validation NDCG@10 per weight."""
    lines = []
    for run in results["runs"]:
        lines += [
            f"\n### {run['domain']}, {run['train_fraction']:.0%} of the training users ({run['users']} test users)\n",
            "| model | " + " | ".join(TABLE_COLUMNS) + " | train minutes | trainable parameters |",
            "|---|" + "---|" * (len(TABLE_COLUMNS) + 2),
        ]
        for name, metrics in run["models"].items():
            parameters = metrics.get("trainable_parameters")
            cells = [name, *(f"{metrics[c]:.4f}" for c in TABLE_COLUMNS), f"{metrics['train_minutes']:.1f}"]
            cells.append("-" if parameters is None else f"{parameters:,}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Code head weight chosen on the validation split (validation NDCG@10 per weight):", ""]
        for name, choice in run["code_head"].items():
            values = ", ".join(f"{weight}: {ndcg:.4f}" for weight, ndcg in choice["validation_ndcg@10"].items())
            lines.append(f"- {name}: weight {choice['chosen_weight']:g} ({values})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args, evaluation_args, sasrec_args = parse_arguments(
        (AdaptArguments, (EvaluationArguments, "eval_"), (SASRecArguments, "sasrec_")), argv, __doc__, ADAPT_DEFAULTS
    )
    results_file = Path(args.results_file or Path(args.output_dir) / "adaptation.json")
    results = {
        "base": str(args.base),
        "settings": vars(args),
        "evaluation": vars(evaluation_args),
        "sasrec": vars(sasrec_args),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "runs": [],
    }
    for domain in args.domains:
        for fraction in args.train_fractions:
            results["runs"].append(adapt_run(args, evaluation_args, sasrec_args, domain, fraction))
            # Written after every run: a long command that fails later keeps what it measured.
            results_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(results_file, results)
            write_text_atomically(results_file.with_suffix(".md"), adaptation_markdown(results) + "\n")
    print(adaptation_markdown(results))
    return results


if __name__ == "__main__":
    main()
