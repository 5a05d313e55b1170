"""Recipe selection on held-out domains: every choice is made without looking at the test domains.

    python -m training.select --output_dir outputs/selection          # the screening table, 2 CPU cores

1. Build the corpus of every bundled domain. The test domains (Office, ML-100k) are never trained on and never
   evaluated here. The validation domains (default: Scientific, a long-tail product catalogue; X-Wines and Yelp,
   popularity-driven ones) are held out in rotation: each fold leaves one of them out of the quantizer's fit and of
   pretraining, indexes it with ``add_items`` alone, as a new domain would be, and trains on the rest
   (``--rotation False``: one fold holds all of them out).
2. In each fold, pretrain each recipe with the same budget (``--max_steps``), keeping the step with the best
   validation AUC on the held-out domain (step 0 included: the prior itself).
3. Evaluate each recipe on the validation split of each held-out domain (zero-shot, from its fold) and of Beauty
   (in-domain, from the first fold), next to the prior, text similarity, popularity and random on the same users,
   and write one table (``selection.md`` and ``selection.json``) with each recipe's gain over the prior per
   held-out domain and the worst domain's gain.

A recipe is a set of ``training.arguments`` model and training settings, plus options of the evaluation (ranking
policy fields, or catalogue counts), so that recipes differing only there share one trained model. A
second run in the same ``--output_dir`` keeps the rows already there and each fold's fitted item tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

from training import pretrain
from training.arguments import (
    DataArguments,
    EvaluationArguments,
    ItemTokenizerArguments,
    ModelArguments,
    PretrainingArguments,
    QuantizerFitConfig,
    SelectionArguments,
    parse_arguments,
)
from training.checkpoint import write_json_atomically, write_text_atomically
from training.corpus import build_corpus, load_corpus
from training.evaluate import evaluate
from training.fit_item_tokenizer import fit_item_tokenizer
from training.protocols import RECBASE_PRIOR

ORIGINAL_DOMAINS = ("amazon14_beauty", "yelp_p5", "amazon18_scientific")  # the first release's pretraining set
# Rows spell out every setting that differs from training.arguments' defaults (the recipe chosen here: dense head,
# content inputs, dense head learning rate 2e-4, popularity buckets). The screened dense models are scored by
# the dense head alone, Beauty included (code_score_weight 0), and have no popularity buckets unless a row
# says so; on a held-out domain the code head never counts (``code_score_domains``).
CODE_HEAD = {"dense_head": False, "content_inputs": False, "popularity_buckets": 0}
POPULARITY_BUCKETS = {"code_score_weight": 0.0}  # the default buckets
RECIPE = {**POPULARITY_BUCKETS, "popularity_buckets": 0}
# name -> (pretraining domains: "original" or "all", ModelArguments / PretrainingArguments fields,
# evaluation options: EvaluationArguments fields, and "ranking": RankingPolicy fields for this evaluation)
RECIPES: dict[str, tuple[str, dict, dict]] = {
    "code head, original domains": ("original", CODE_HEAD, {}),
    "code head, all domains": ("all", CODE_HEAD, {}),
    "code head, PMI scoring": ("all", CODE_HEAD, {"ranking": {"calibrated_code_score": True}}),
    "code head, relabelled windows 50%": ("all", {**CODE_HEAD, "relabel_share": 0.5}, {}),
    "dense head + content inputs": ("all", {**RECIPE, "dense_head_learning_rate": 0.0}, {}),
    "dense head + content inputs, dense head learning rate 2e-5": (
        "all",
        {**RECIPE, "dense_head_learning_rate": 2e-5},
        {},
    ),
    "dense head + content inputs, dense head learning rate 2e-4": ("all", RECIPE, {}),
    "recipe, original domains": ("original", RECIPE, {}),
    "recipe without content inputs": ("all", {**RECIPE, "content_inputs": False}, {}),
    "recipe + relabelled windows 50%": ("all", {**RECIPE, "relabel_share": 0.5}, {}),
    "recipe + dropout 0.1": ("all", {**RECIPE, "embedding_dropout": 0.1, "residual_dropout": 0.1}, {}),
    "recipe, history decay 0.3": ("all", {**RECIPE, "dense_history_decay": 0.3}, {}),
    "recipe, temperature 0.05": ("all", {**RECIPE, "dense_temperature": 0.05}, {}),
    "recipe, 4x steps": ("all", {**RECIPE, "max_steps": 2400}, {}),
    "recipe + popularity buckets, no counts given": ("all", POPULARITY_BUCKETS, {}),
    "recipe + popularity buckets, + catalogue counts": ("all", POPULARITY_BUCKETS, {"catalogue_counts": True}),
}


def recipe_arguments(settings: dict) -> tuple[ModelArguments, dict]:
    """A recipe's settings split into the model's (as ``ModelArguments``) and the training's (field -> value)."""
    model_fields = {f.name for f in dataclasses.fields(ModelArguments)}
    return (
        ModelArguments(**{k: v for k, v in settings.items() if k in model_fields}),
        {k: v for k, v in settings.items() if k not in model_fields},
    )


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def selection_markdown(results: dict) -> str:
    """One row per recipe and baseline: each validation domain's AUC / GAUC / NDCG@10 / Recall@10, Beauty
    Recall@10 and CPU minutes."""
    domains = results["validation_domains"]
    header = (
        ["recipe", "best step (per fold)"]
        + [f"{d} AUC / GAUC / NDCG@10 / R@10" for d in domains]
        + ["mean AUC", "Beauty R@10 (in-domain)", "CPU minutes"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in results["rows"].items():
        steps = row.get("best_step")
        cells = [name, " / ".join(str(step) for step in steps.values()) if isinstance(steps, dict) else "-"]
        measured = [d for d in domains if d in row["domains"]]
        for domain in domains:
            m = row["domains"].get(domain)
            cells.append(f"{m['auc']:.4f} / {m['gauc']:.4f} / {m['ndcg@10']:.4f} / {m['recall@10']:.4f}" if m else "-")
        in_domain = row["domains"].get(results["in_domain"])
        cells += [
            f"{sum(row['domains'][d]['auc'] for d in measured) / len(measured):.4f}" if measured else "-",
            f"{in_domain['recall@10']:.4f}" if in_domain else "-",
            f"{row['minutes']:.1f}" if "minutes" in row else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", gain_markdown(results)])


GAIN_METRICS = ("ndcg@10", "recall@10", "auc", "gauc")


def gains_over_prior(results: dict) -> dict[str, dict]:
    """Per recipe: each held-out validation domain's metrics minus the training-free prior's (same users, same
    run), and the worst domain's gain per metric (the headline: a learned part earns its place only where it is
    positive)."""
    prior = results["rows"].get(RECBASE_PRIOR)
    if prior is None:
        return {}
    gains = {}
    for name, row in results["rows"].items():
        if "settings" not in row:  # a baseline
            continue
        per_domain = {  # the held-out domains measured so far (a rotation fills them fold by fold)
            d: {m: row["domains"][d][m] - prior["domains"][d][m] for m in GAIN_METRICS}
            for d in results["validation_domains"]
            if d in row["domains"] and d in prior["domains"]
        }
        if not per_domain:
            continue
        gains[name] = {
            "domains": per_domain,
            "worst": {m: min(g[m] for g in per_domain.values()) for m in GAIN_METRICS},
        }
    return gains


def gain_markdown(results: dict) -> str:
    """The recipes' gains over the prior on each held-out domain, worst domain first in each row."""
    domains = results["validation_domains"]
    header = ["recipe", "worst domain's gain NDCG@10 / R@10 / AUC / GAUC"] + [f"{d} gain" for d in domains]
    lines = [
        "Trained minus the prior (no training), validation split of the held-out domains:",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, gain in gains_over_prior(results).items():
        cells = [name, " / ".join(f"{gain['worst'][m]:+.4f}" for m in GAIN_METRICS)]
        cells += [
            " / ".join(f"{gain['domains'][d][m]:+.4f}" for m in GAIN_METRICS) if d in gain["domains"] else "-"
            for d in domains
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_fold_tokenizer(
    args: SelectionArguments, vocabulary: ItemTokenizerArguments, corpus_dir: Path, fold_dir: Path, held_out: set
) -> Path:
    """The fold's item tokenizer (fitted once, on the domains it trains on; the held-out ones indexed with
    ``add_items`` alone, as a new domain is); returns its folder."""
    tokenizer_dir = fold_dir / "item-tokenizer"
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        tokenizer, _ = fit_item_tokenizer(
            load_corpus(corpus_dir)["items"],
            [d for d in args.domains if d not in held_out],
            [d for d in args.domains if d in held_out],
            QuantizerFitConfig(codebook_sizes=vocabulary.codebook_sizes, seed=args.seed),
            vocabulary.disambiguation_size,
            vocabulary.text_encoder,
            cache_dir=args.cache_dir,
        )
        tokenizer.save_pretrained(tokenizer_dir)
    return tokenizer_dir


def main(argv: list[str] | None = None) -> dict:
    args, vocabulary = parse_arguments((SelectionArguments, ItemTokenizerArguments), argv, __doc__)
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    output_dir = Path(args.output_dir)
    # Each fold holds out one validation domain (rotation) or all of them, beside the test domains.
    folds = [[domain] for domain in args.validation_domains] if args.rotation else [list(args.validation_domains)]
    for fold in folds:
        train_domains = [d for d in args.domains if d not in set(args.test_domains) | set(fold)]
        if args.in_domain not in train_domains or args.in_domain in args.validation_domains:
            raise ValueError(
                f"the in-domain check {args.in_domain!r} must be a pretraining domain of every fold, never held out"
            )
    corpus_dir = args.corpus_dir or build_corpus(args.domains, output_dir / "corpus", data_dir=args.data_dir)

    results_path = output_dir / "selection.json"
    results: dict = {
        "validation_domains": args.validation_domains,
        "folds": folds,
        "in_domain": args.in_domain,
        "test_domains": args.test_domains,
        "split": "validation",
        "settings": vars(args),
        "rows": {},
    }
    if results_path.is_file():
        results["rows"] = json.loads(results_path.read_text())["rows"]
    rows = results["rows"]
    for name in args.recipes or RECIPES:
        domain_choice, settings, evaluation_options = RECIPES[name]
        for fold in folds:
            if all(d in rows.get(name, {}).get("domains", {}) for d in fold):
                continue  # measured by an earlier run in this folder
            held_out = set(args.test_domains) | set(fold)
            train_domains = [d for d in args.domains if d not in held_out]
            domains = [
                d for d in (ORIGINAL_DOMAINS if domain_choice == "original" else train_domains) if d in train_domains
            ]
            fold_dir = output_dir / f"held-out-{'+'.join(fold)}"
            tokenizer_dir = fit_fold_tokenizer(args, vocabulary, corpus_dir, fold_dir, held_out)
            started = time.process_time()
            # Named by what is trained, so recipes that differ only in evaluation share one model.
            run_dir = (
                fold_dir / "runs" / slug(" ".join([domain_choice, *(f"{k} {v}" for k, v in sorted(settings.items()))]))
            )
            if not (run_dir / "config.json").is_file():
                model_args, training_settings = recipe_arguments(settings)
                pretrain.train(
                    DataArguments(corpus_dir=str(corpus_dir), domains=domains, tokenizer_dir=str(tokenizer_dir)),
                    model_args,
                    PretrainingArguments(
                        **{
                            "output_dir": str(run_dir),
                            "max_steps": args.max_steps,
                            "seed": args.seed,
                            "checkpointing_steps": 10**9,
                            "validation_domains": fold,
                            "validation_users": args.eval_users,
                            "validation_negatives": args.negatives,
                            "validation_metric": "auc",
                            "early_stopping_patience": 0,
                            "validate_every": args.validate_every,
                            **training_settings,
                        }
                    ),
                )
            # The in-domain check comes from the first fold's model.
            eval_domains = fold + ([args.in_domain] if fold == folds[0] else [])
            overrides = {key: value for key, value in evaluation_options.items() if key != "ranking"}
            evaluated = evaluate(
                EvaluationArguments(
                    checkpoint=str(run_dir),
                    corpus_dir=str(corpus_dir),
                    domains=eval_domains,
                    zero_shot=fold,
                    split="validation",
                    max_users=args.eval_users,
                    negatives=args.negatives,
                    cache_dir=args.cache_dir,
                    seed=args.seed,
                    model_name=name,
                    # until a dense model gave this fold's prior row
                    baselines=fold[0] not in rows.get(RECBASE_PRIOR, {}).get("domains", {}),
                    **overrides,
                ),
                {"residual_domains": None, **evaluation_options.get("ranking", {})},
            )  # the residual on held-out domains
            validation = run_dir / "validation.json"
            for model_name in evaluated["domains"][fold[0]]["models"]:
                row = rows.setdefault(model_name, {"domains": {}})
                for domain in eval_domains:
                    row["domains"][domain] = evaluated["domains"][domain]["models"][model_name]
            row = rows[name]
            row.setdefault("best_step", {})[" + ".join(fold)] = (
                json.loads(validation.read_text())["best"]["step"] if validation.is_file() else None
            )
            row["minutes"] = row.get("minutes", 0.0) + (time.process_time() - started) / 60
            row.update(settings=settings, evaluation=evaluation_options, pretraining_domains=domains)
            results["gains_over_prior"] = gains_over_prior(results)
            write_json_atomically(results_path, results)
            write_text_atomically(output_dir / "selection.md", selection_markdown(results) + "\n")
    print(selection_markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
