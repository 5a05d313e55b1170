"""What an item's content vector should be: how well each representation finds the next item, with no model.

    python benchmarks/content_vectors.py --selection_dir outputs/selection3

On the held-out validation domains of a ``training.select`` run (its corpus and item tokenizer) and on Beauty
(a pretraining domain), the next item is ranked among all the domain's items (history items excluded) by cosine to
the last history item, and by cosine to the dense head's prior (the recency-weighted sum of the last 10 unit
vectors, decay 0.5), for: the raw text embedding, the aligned (centred, rotated) one (what the tokenizer stores
as ``item_vectors``), the quantizer encoder's 64-number latent (the stored vector until the in-domain issue) and
the quantized latent (the sum of the item's code vectors). Recall@10, NDCG@10 and AUC (target + 20 uniform
negatives) on the validation split, 500 users, the same users as the selection.
Writes ``benchmarks/results/content_vectors.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenization_recbase import RecBaseTokenizer, align
from tokenization_recbase.embedding_cache_recbase import EmbeddingCache, default_cache_dir
from training.checkpoint import write_text_atomically
from training.corpus import load_corpus
from training.protocols import build_evaluation_set
from training.ranking_metrics.ranking_metrics import auc, ndcg_at_k, recall_at_k

RESULTS = Path(__file__).resolve().parent / "results" / "content_vectors.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--selection_dir", default="outputs/selection3")
    parser.add_argument("--domains", nargs="+", default=["amazon18_scientific", "xwines", "amazon14_beauty"])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--cache_dir", default=str(default_cache_dir()))
    args = parser.parse_args()
    tokenizer = RecBaseTokenizer.from_pretrained(Path(args.selection_dir) / "item-tokenizer")
    corpus = load_corpus(Path(args.selection_dir) / "corpus")
    cache = EmbeddingCache(tokenizer.text_encoder, args.cache_dir)
    lines = [
        "| domain | item representation | last item: R@10 / NDCG@10 / AUC | prior of 10 items: R@10 / NDCG@10 / AUC |",
        "|---|---|---|---|",
    ]
    for domain in args.domains:
        items = tokenizer.domain_items(domain)
        index = {key: i for i, key in enumerate(items)}
        raw = cache.embed([tokenizer.item_text(key) for key in items], progress=False)
        aligned = align(raw, tokenizer.domain_alignments[domain])
        with torch.no_grad():
            representations = {
                "raw text embedding (= text similarity)": raw,
                "aligned text embedding (stored item vector)": aligned,
                "quantizer encoder latent": tokenizer.quantizer.encoder(aligned),
                "quantized latent (sum of code vectors)": tokenizer.code_latent_table(len(tokenizer))[
                    tokenizer.item_token_ids(items)
                ].sum(-2),
            }
        data = build_evaluation_set(corpus, domain, items, "validation", args.users, seed=0)
        for name, vectors in representations.items():
            unit = F.normalize(vectors.float(), dim=-1)
            cells = []
            for history_items in (1, 10):
                recall = ndcg = 0.0
                scores = []
                for history, target, candidates in zip(data.histories, data.targets, data.candidates):
                    recent = [index[key] for key in history[::-1][:history_items]]
                    query = sum(0.5**k * unit[i] for k, i in enumerate(recent))
                    similarity = unit @ query
                    scores.append(similarity[[index[key] for key in candidates]].tolist())
                    similarity[[index[key] for key in history]] = float("-inf")
                    ranked = [items[i] for i in similarity.topk(10).indices.tolist()]
                    recall += recall_at_k(ranked, target, 10)
                    ndcg += ndcg_at_k(ranked, target, 10)
                labels = [y for row in scores for y in [1] + [0] * (len(row) - 1)]
                cells.append(
                    f"{recall / len(data.targets):.4f} / {ndcg / len(data.targets):.4f} / "
                    f"{auc([s for row in scores for s in row], labels):.4f}"
                )
            lines.append(f"| {domain} | {name} | " + " | ".join(cells) + " |")
    text = __doc__ + "\n" + "\n".join(lines) + "\n"
    write_text_atomically(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
