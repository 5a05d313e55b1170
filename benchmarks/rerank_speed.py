"""What the whitened re-rank costs a full ranking: ``ItemRanker.rank`` of one batch of users over a whole domain,
the checkpoint's prior with its re-rank against the same prior without it (the plain cosine), timed in one run.

    python benchmarks/rerank_speed.py --checkpoint outputs/recbase-tiny --domains yelp_p5 amazon18_office

Each domain: the mean milliseconds of ``--repeats`` calls (after one warm-up call) for ``--users`` histories of 5 of
the domain's items, both policies interleaved, and their ratio. Writes ``benchmarks/results/rerank_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_recbase import ItemRanker  # noqa: E402
from training.checkpoint import load_checkpoint, write_json_atomically, write_text_atomically  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="outputs/recbase-tiny")
    parser.add_argument("--domains", nargs="+", default=["yelp_p5", "amazon18_office"])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    model, tokenizer = load_checkpoint(args.checkpoint)
    model.eval()
    reranked = model.ranking_policy.prior_only()
    if not reranked.whitened_rerank_top:
        raise ValueError(f"{args.checkpoint}: its ranking policy has no whitened re-rank to time")
    rankers = {
        "plain cosine": ItemRanker(model, tokenizer, dataclasses.replace(reranked, whitened_rerank_top=0)),
        "re-ranked": ItemRanker(model, tokenizer, reranked),
    }
    results = {"checkpoint": args.checkpoint, "users": args.users, "threads": torch.get_num_threads(), "domains": {}}
    for domain in args.domains:
        items = tokenizer.domain_items(domain)
        histories = [items[start : start + 5] for start in range(0, 7 * args.users, 7)]
        seconds = dict.fromkeys(rankers, 0.0)
        for ranker in rankers.values():
            ranker.rank(histories, items, 10)  # warm-up: the per-domain caches are built here
        for _ in range(args.repeats):
            for name, ranker in rankers.items():
                start = time.perf_counter()
                ranker.rank(histories, items, 10)
                seconds[name] += time.perf_counter() - start
        ms = {name: 1e3 * total / args.repeats for name, total in seconds.items()}
        results["domains"][domain] = {"items": len(items), "ms": ms, "ratio": ms["re-ranked"] / ms["plain cosine"]}
    lines = [
        f"`python benchmarks/rerank_speed.py --checkpoint {args.checkpoint} --domains {' '.join(args.domains)}` "
        f"({args.users} users per call, {results['threads']} threads)",
        "",
        "| domain | items | plain cosine (ms) | re-ranked (ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    for domain, entry in results["domains"].items():
        plain, reranked_ms = entry["ms"]["plain cosine"], entry["ms"]["re-ranked"]
        lines.append(f"| {domain} | {entry['items']} | {plain:.1f} | {reranked_ms:.1f} | {entry['ratio']:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    write_json_atomically(RESULTS / "rerank_speed.json", results)
    write_text_atomically(RESULTS / "rerank_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
