"""Why zero-shot ranking fails: figures behind the issue note, for one finished run of ``training.main``.

    python benchmarks/zero_shot_diagnostics.py --run outputs/recbase-tiny
    # writes benchmarks/results/zero_shot_diagnostics.{json,md}

Per evaluated domain, candidate scoring (the true next item + 20 sampled negatives, as ``training.evaluate``):
- ``code geometry``: cosine between the candidate's and the last 5 history items' quantized latents (the sum
  of their codebook vectors), with no model: how much signal the codes themselves carry;
- ``RecBase``: the model's log-likelihood of the candidate's codes after the history;
- ``RecBase calibrated``: the same minus the model's log-likelihood of the candidate after ``<bos>`` alone
  (its prior over codes, learned on the pretraining domains).
Also the share of real (non-pad) tokens in shuffled and in length-grouped training batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

import torch

from modeling_recbase import ItemRanker
from training.checkpoint import load_checkpoint, write_json_atomically, write_text_atomically
from training.corpus import load_corpus
from training.pretraining_data import LengthGroupedSampler, training_windows
from training.protocols import build_evaluation_set
from training.ranking_metrics.ranking_metrics import auc

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def quantized_latents(tokenizer, keys: list[str]) -> torch.Tensor:
    """(len(keys), latent) sum of each item's codebook vectors, one per level (the disambiguation code has none)."""
    codes = torch.tensor([tokenizer.item_codes[key][: len(tokenizer.codebook_sizes)] for key in keys])
    return sum(book.detach()[codes[:, level]] for level, book in enumerate(tokenizer.quantizer.codebooks))


@torch.no_grad()
def prior_log_likelihood(model, tokenizer, keys: list[str]) -> torch.Tensor:
    """(len(keys),) log-likelihood of each item's codes right after ``<bos>``."""
    ids = tokenizer.item_token_ids(keys)
    inputs = torch.cat([torch.full((len(keys), 1), tokenizer.bos_token_id), ids], 1)
    return model(inputs).logits[:, :-1].log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)


def pooled_auc(scores: list[list[float]]) -> float:
    """AUC over all users' candidates, the true item first in each row."""
    return auc([s for row in scores for s in row], [int(i == 0) for row in scores for i in range(len(row))])


def real_token_share(lengths: list[int], order: list[int], batch_size: int) -> float:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(lengths) / sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="outputs/recbase-tiny", help="a folder written by python -m training.main")
    parser.add_argument("--corpus_dir", default=None, help="default: <run>-work/corpus")
    parser.add_argument("--domains", nargs="+", default=["amazon14_beauty", "amazon18_office", "ml-100k"])
    parser.add_argument("--pretrain_domains", nargs="+", default=["amazon14_beauty", "yelp_p5", "amazon18_scientific"])
    parser.add_argument("--max_users", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=64, help="training batch size, for the padding figure")
    args = parser.parse_args()
    model, tokenizer = load_checkpoint(args.run)
    corpus = load_corpus(args.corpus_dir or f"{args.run}-work/corpus")
    results: dict = {"run": args.run, "max_users": args.max_users, "auc": {}}
    for domain in args.domains:
        data = build_evaluation_set(corpus, domain, tokenizer.domain_items(domain), max_users=args.max_users)
        latents = torch.nn.functional.normalize(quantized_latents(tokenizer, data.items), dim=-1)
        index = {key: row for row, key in enumerate(data.items)}
        geometry = [
            (
                latents[[index[c] for c in row]]
                @ torch.nn.functional.normalize(latents[[index[k] for k in history[-5:]]].mean(0), dim=0)
            ).tolist()
            for history, row in zip(data.histories, data.candidates)
        ]
        model_scores = []
        ranker = ItemRanker(model, tokenizer, dataclasses.replace(model.ranking_policy, max_history_items=20))
        for start in range(0, len(data.histories), 32):
            model_scores += ranker.score(data.histories[start : start + 32], data.candidates[start : start + 32])
        prior = prior_log_likelihood(model, tokenizer, data.items).tolist()
        calibrated = [
            [s - prior[index[c]] for s, c in zip(scores, row)] for scores, row in zip(model_scores, data.candidates)
        ]
        results["auc"][domain] = {
            "code geometry": pooled_auc(geometry),
            "RecBase": pooled_auc(model_scores),
            "RecBase calibrated": pooled_auc(calibrated),
        }

    pretraining = corpus["train"].filter(lambda d: d in set(args.pretrain_domains), input_columns="domain")
    windows = training_windows(tokenizer, pretraining["items"], 20)
    lengths = [len(ids) for ids in windows["input_ids"]]
    shuffled = list(range(len(lengths)))
    random.Random(0).shuffle(shuffled)
    results["real_token_share"] = {
        "shuffled": real_token_share(lengths, shuffled, args.batch_size),
        "length-grouped": real_token_share(
            lengths, list(LengthGroupedSampler(lengths, args.batch_size, seed=0)), args.batch_size
        ),
    }

    lines = ["| domain | code geometry (no model) | RecBase | RecBase calibrated |", "|---|---|---|---|"]
    lines += [
        f"| {d} | {r['code geometry']:.4f} | {r['RecBase']:.4f} | {r['RecBase calibrated']:.4f} |"
        for d, r in results["auc"].items()
    ]
    lines += ["", "| training batches | real-token share |", "|---|---|"]
    lines += [f"| {name} | {share:.3f} |" for name, share in results["real_token_share"].items()]
    write_json_atomically(RESULTS_DIR / "zero_shot_diagnostics.json", results)
    write_text_atomically(RESULTS_DIR / "zero_shot_diagnostics.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
