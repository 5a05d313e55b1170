"""The learned popularity bias on each pretraining domain: validation ranking with and without it.

    python benchmarks/popularity_bias.py --checkpoint outputs/recbase-tiny

For the main job's folder, on the validation split of each pretraining domain (1,000 sampled users, seed 0,
history excluded): Recall@10, NDCG@10 and AUC with the model's popularity bias (its buckets from the
pretraining domains' catalogue counts) and without it (``popularity_buckets`` 0 at scoring). Writes
``benchmarks/results/popularity_bias.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.arguments import EvaluationArguments
from training.checkpoint import write_text_atomically
from training.evaluate import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "popularity_bias.md"
DOMAINS = ["amazon14_beauty", "yelp_p5", "amazon18_scientific", "microlens_50k", "xwines", "foursquare_nyc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="outputs/recbase-tiny")
    parser.add_argument("--corpus_dir", default=None, help="default: <checkpoint>-work/corpus")
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    corpus_dir = args.corpus_dir or f"{args.checkpoint}-work/corpus"
    settings = EvaluationArguments(
        checkpoint=args.checkpoint,
        corpus_dir=corpus_dir,
        domains=DOMAINS,
        split="validation",
        max_users=args.users,
        baselines=False,
    )
    runs = {
        label: evaluate(settings, ranking=overrides)
        for label, overrides in (("with the bias", {}), ("without", {"popularity_bias": False}))
    }
    lines = [
        "| domain | Recall@10 with / without | NDCG@10 with / without | AUC with / without |",
        "|---|---|---|---|",
    ]
    for domain in DOMAINS:
        with_bias, without = (next(iter(run["domains"][domain]["models"].values())) for run in runs.values())
        lines.append(
            f"| {domain} | "
            + " | ".join(f"{with_bias[m]:.4f} / {without[m]:.4f}" for m in ("recall@10", "ndcg@10", "auc"))
            + " |"
        )
    text = __doc__ + "\n" + "\n".join(lines) + "\n"
    write_text_atomically(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
