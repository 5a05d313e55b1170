"""In-domain decoding and training choices, measured on Beauty's validation split (never on the test split).

    python benchmarks/in_domain.py --checkpoint outputs/recbase-tiny \
        --runs "dropout 0.1=outputs/dropout-0.1" "dropout 0=outputs/dropout-0"

For the main job's folder, on the validation split: the code head's weight in scores (0 = the dense head ranks
alone, the default), the beam width of the constrained beam search when the code head has weight, whether history
items may be recommended (``exclude_history``, baselines measured both ways too) and the learned popularity bias
(``popularity_buckets`` 0 at scoring); then the defaults and the bias on the test split; the main job's
validation curve (``validation.json``); and, for each ``--runs`` folder (e.g. the same recipe with other dropout
rates), its defaults on the validation split. Text similarity, popularity and random run in the same job.
1,000 sampled users per split, seed 0.
Writes ``benchmarks/results/in_domain.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training.arguments import EvaluationArguments
from training.checkpoint import write_json_atomically, write_text_atomically
from training.evaluate import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "in_domain"
DOMAIN = "amazon14_beauty"
COLUMNS = ["recall@10", "ndcg@10", "auc"]


def rows_of(results: dict, label: str, seconds: float) -> list[tuple[str, str, dict, float]]:
    return [(label, name, metrics, seconds) for name, metrics in results["domains"][DOMAIN]["models"].items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="outputs/recbase-tiny")
    parser.add_argument("--corpus_dir", default=None, help="default: <checkpoint>-work/corpus")
    parser.add_argument(
        "--runs", nargs="*", default=[], help="label=folder of other runs to evaluate with their defaults"
    )
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    corpus_dir = args.corpus_dir or f"{args.checkpoint}-work/corpus"
    # (label, ranking policy fields, exclude_history, beams, baselines too, split)
    settings = [
        ("defaults (dense head ranks, history excluded)", {}, True, 20, True, "validation"),
        ("history items allowed", {}, False, 20, True, "validation"),
        ("no popularity bias", {"popularity_bias": False}, True, 20, False, "validation"),
    ]
    settings += [
        (f"code head weight 1, {beams} beams", {"code_score_weight": 1.0}, True, beams, False, "validation")
        for beams in (10, 20, 40)
    ]
    settings += [
        (f"code head weight {weight}", {"code_score_weight": weight}, True, 20, False, "validation")
        for weight in (0.1, 0.3)
    ]
    settings += [
        ("defaults, test split", {}, True, 20, True, "test"),
        ("no popularity bias, test split", {"popularity_bias": False}, True, 20, False, "test"),
    ]
    rows = []
    for label, overrides, exclude, beams, baselines, split in settings:
        started = time.perf_counter()
        results = evaluate(
            EvaluationArguments(
                checkpoint=args.checkpoint,
                corpus_dir=corpus_dir,
                domains=[DOMAIN],
                exclude_history=exclude,
                num_beams=beams,
                baselines=baselines,
                split=split,
                max_users=args.users,
            ),
            ranking=overrides,
        )
        rows += rows_of(results, label, time.perf_counter() - started)
    run_lines, run_results = [], []
    if args.runs:
        run_lines = [
            "",
            "Other runs of the same recipe (`training.pretrain`, same corpus and tokenizer, one change each), "
            "each keeping its best step by mean validation NDCG@10 over the pretraining domains, then "
            "evaluated like the defaults above:",
            "",
            "| run | kept step | mean validation NDCG@10 | Beauty Recall@10 | Beauty NDCG@10 | Beauty AUC |",
            "|---|---|---|---|---|---|",
        ]
    for run in args.runs:
        label, folder = run.split("=", 1)
        results = evaluate(
            EvaluationArguments(
                checkpoint=folder,
                corpus_dir=corpus_dir,
                domains=[DOMAIN],
                baselines=False,
                split="validation",
                max_users=args.users,
            )
        )
        metrics = next(iter(results["domains"][DOMAIN]["models"].values()))
        best = json.loads((Path(folder) / "validation.json").read_text())["best"]
        run_lines.append(
            f"| {label} | {best['step']} | {best[best['metric']]:.4f} | "
            + " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS)
            + " |"
        )
        run_results.append({"run": label, "folder": folder, "best": best, **metrics})
    lines = [f"| setting | model | {' | '.join(COLUMNS)} | seconds |", "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    lines += [
        f"| {label} | {name} | " + " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS) + f" | {seconds:.0f} |"
        for label, name, metrics, seconds in rows
    ]
    validation = Path(args.checkpoint) / "validation.json"
    curve = []
    if validation.is_file():
        log = json.loads(validation.read_text())
        curve = [
            "",
            f"Validation during the main job ({log['best']['metric']}, mean over the pretraining domains; "
            f"kept step {log['best']['step']}, stopped early: {log['stopped_early']}):",
            "",
            "| step | mean NDCG@10 | Beauty NDCG@10 | Beauty Recall@10 |",
            "|---|---|---|---|",
        ]
        curve += [
            f"| {entry['step']} | {entry['ndcg@10']:.4f} | {entry[f'ndcg@10_{DOMAIN}']:.4f} | "
            f"{entry[f'recall@10_{DOMAIN}']:.4f} |"
            for entry in log["history"]
        ]
    text = __doc__ + "\n" + "\n".join(lines + run_lines + curve) + "\n"
    write_text_atomically(RESULTS.with_suffix(".md"), text)
    write_json_atomically(
        RESULTS.with_suffix(".json"),
        {
            "settings": [
                {"setting": label, "model": name, **metrics, "seconds": seconds}
                for label, name, metrics, seconds in rows
            ],
            "runs": run_results,
        },
    )
    print(text)


if __name__ == "__main__":
    main()
