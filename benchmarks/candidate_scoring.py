"""``score_candidates`` cost: candidates per second and peak memory, 100 / 1,000 / 10,000 candidates.

    python benchmarks/candidate_scoring.py --checkpoint outputs/recbase-tiny

One user with a history of as many Beauty items as the model's context holds (254 items for recbase-tiny's
1,024 positions), scored against N Beauty items, with the code head weighted 1 (its continuation over the
history's cache is the costly part; the dense head alone is one matrix product) and with the folder's
defaults. Each size runs in a fresh process so that its peak resident memory (``ru_maxrss``) is its own; the
loaded model and tokenizer's memory is reported apart (size 0). The history's cache is repeated for at most
``SCORING_ROWS`` (user, candidate) rows at a time, so the peak must not grow with N. Writes
``benchmarks/results/candidate_scoring.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "candidate_scoring"
SIZES = (0, 100, 1000, 10000)
DOMAIN = "amazon14_beauty"


def measure(checkpoint: str, size: int, code_score_weight: float | None) -> dict:
    """In this process: load, score ``size`` candidates once, report seconds and peak memory."""
    from modeling_recbase import ItemRanker
    from training.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint)
    policy = model.ranking_policy
    if code_score_weight is not None:
        policy = dataclasses.replace(policy, code_score_weight=code_score_weight, code_score_domains=None)
    ranker = ItemRanker(model, tokenizer, policy)
    items = tokenizer.domain_items(DOMAIN)
    history_items = (model.config.max_position_embeddings - 1) // tokenizer.tokens_per_item - 1
    history, candidates = items[:history_items], items[history_items : history_items + size]
    seconds = 0.0
    if size:
        started = time.perf_counter()
        ranker.score([history], [candidates])
        seconds = time.perf_counter() - started
    return {
        "candidates": size,
        "history_items": history_items,
        "seconds": seconds,
        "candidates_per_second": size / seconds if size else 0.0,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="outputs/recbase-tiny")
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # one measurement (child process)
    parser.add_argument("--code_score_weight", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is not None:
        print(json.dumps(measure(args.checkpoint, args.size, args.code_score_weight)))
        return
    rows = []
    for label, weight in (("code head weight 1 + dense head", 1.0), ("folder defaults", None)):
        for size in SIZES:
            command = [sys.executable, __file__, "--checkpoint", args.checkpoint, "--size", str(size)]
            command += ["--code_score_weight", str(weight)] if weight is not None else []
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append({"scoring": label, **json.loads(output.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    lines = [
        "| scoring | candidates | history items | seconds | candidates/s | peak RSS (GB) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['scoring']} | {r['candidates']} | {r['history_items']} | {r['seconds']:.2f} | "
        f"{r['candidates_per_second']:.0f} | {r['peak_rss_gb']:.2f} |"
        for r in rows
    ]
    from training.checkpoint import write_json_atomically, write_text_atomically

    write_text_atomically(RESULTS.with_suffix(".md"), __doc__ + "\n" + "\n".join(lines) + "\n")
    write_json_atomically(RESULTS.with_suffix(".json"), rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
