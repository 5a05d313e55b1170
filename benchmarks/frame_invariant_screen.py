"""Screen frame-invariant learned parts of the dense head against its training-free prior, on held-out domains.

    python -m benchmarks.frame_invariant_screen --tokenizer_dir outputs/recbase-tiny-work/item-tokenizer \
        --corpus_dir outputs/recbase-tiny-work/corpus

The prior scores an item by the cosine between its unit content vector (its aligned text embedding) and the
recency-weighted sum of the history's unit vectors (decay 0.5 per step back, 10 items), less that cosine's mean
over the domain. Each learned part below reads only quantities that mean the same in every domain, starts as the
prior exactly, and is trained with the dense head's loss (softmax over the next item and 128 items of its domain,
one domain per batch) on every pretraining domain but one, then measured on the held-out one's validation split
(never the test domains, never a test split). Each fold rotates the held-out domain; the table gives the learned
part minus the prior in every metric, so a part earns its place only where the worst fold's gain is positive.

- ``history weights`` (``HistoryWeights``): each history item's weight is ``decay ** k * exp(g(features))``, ``g`` a
  small MLP, zero at init, of its position, its cosine to the last item, its mean cosine to the other history items,
  whether it repeats one, and its norm relative to the history's mean norm;
- ``axis weights``: one learned weight per principal axis of the aligned frame (axes are ordered by variance in
  every domain), applied to query and items before the cosine;
- both together.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenization_recbase import RecBaseTokenizer
from training.checkpoint import write_json_atomically, write_text_atomically
from training.corpus import load_corpus
from training.protocols import build_evaluation_set
from training.ranking_metrics.ranking_metrics import candidate_metrics, ranking_means

HISTORY_ITEMS, DECAY, TEMPERATURE = 10, 0.5, 0.1  # the dense head's defaults (RecBaseConfig)
RESULTS = Path(__file__).parent / "results" / "frame_invariant_screen"


HISTORY_FEATURES = 4  # besides the position: cosine to the last item, to the others, repeat, relative norm


class HistoryWeights(nn.Module):
    """Frame-invariant weights of the history items in the dense head's prior.

    Item k steps back gets ``dense_history_decay ** k * exp(g(features))``, ``g`` a small MLP whose output layer
    starts at zero, so at init the prior is the decay formula exactly. The features mean the same in every domain,
    whatever its frame: the item's position, its cosine to the last item, its mean cosine to the other history
    items, whether it repeats one of them, and its vector's norm (its distance to the domain's centre) relative to
    the history's mean norm. So what it learns on the pretraining domains can carry to a domain never seen."""

    def __init__(self, items: int = HISTORY_ITEMS, size: int = 32) -> None:
        super().__init__()
        self.items = items
        self.fc_in = nn.Linear(items + HISTORY_FEATURES, size)
        self.fc_out = nn.Linear(size, 1)
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors (..., items, dim) of the history, newest first, zero where there is no item -> (..., items)
        log-weights (added to ``k * log(decay)``)."""
        norms = vectors.norm(dim=-1)  # (..., K)
        valid = norms > 0
        unit = F.normalize(vectors, dim=-1)
        cosines = unit @ unit.transpose(-1, -2)  # (..., K, K)
        count = valid.sum(-1, keepdim=True)
        to_others = ((cosines * valid[..., None, :]).sum(-1) - valid.float()) / (count - 1).clamp(min=1)
        repeats = ((cosines > 1 - 1e-6) & valid[..., None, :]).sum(-1) > 1
        mean_norm = norms.sum(-1, keepdim=True) / count.clamp(min=1)
        relative_norm = torch.log(norms.clamp(min=1e-12) / mean_norm.clamp(min=1e-12))
        position = torch.eye(self.items, device=vectors.device).expand(*vectors.shape[:-2], -1, -1)
        features = (
            torch.cat(
                [
                    position,
                    cosines[..., 0, None],
                    to_others[..., None],
                    repeats[..., None].float(),
                    relative_norm[..., None],
                ],
                -1,
            )
            * valid[..., None]
        )
        return self.fc_out(F.gelu(self.fc_in(features))).squeeze(-1)


class DomainTable:
    """One domain's items: keys, content vectors and unit vectors."""

    def __init__(self, tokenizer: RecBaseTokenizer, domain: str) -> None:
        self.keys = tokenizer.domain_items(domain)
        self.row = {key: i for i, key in enumerate(self.keys)}
        self.vectors = tokenizer.item_vectors(self.keys).float()
        self.unit = F.normalize(self.vectors, dim=-1)

    def history_vectors(self, histories: list[list[str]]) -> torch.Tensor:
        """(B, K, D): the content vectors of each history's last K items, newest first, zero where none."""
        vectors = torch.zeros(len(histories), HISTORY_ITEMS, self.vectors.shape[1])
        for b, history in enumerate(histories):
            recent = [self.row[key] for key in history[-HISTORY_ITEMS:]][::-1]
            vectors[b, : len(recent)] = self.vectors[recent]
        return vectors


class FrameInvariantHead(nn.Module):
    """The prior, with the model's learned history weights and/or per-axis weights, both the identity at init."""

    def __init__(self, history_weights: bool, axis_weights: bool, dim: int) -> None:
        super().__init__()
        self.history_weights = HistoryWeights() if history_weights else None
        self.log_axis = nn.Parameter(torch.zeros(dim)) if axis_weights else None
        self.register_buffer("decay", DECAY ** torch.arange(HISTORY_ITEMS, dtype=torch.float))

    def query(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, K, D) history vectors -> (B, D): the weighted sum of their unit vectors."""
        weights = self.decay.expand(vectors.shape[:2])
        if self.history_weights is not None:
            weights = weights * torch.exp(self.history_weights(vectors))
        return (weights[..., None] * F.normalize(vectors, dim=-1)).sum(1)

    def transform(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors * torch.exp(self.log_axis), dim=-1) if self.log_axis is not None else vectors

    def scores(self, query: torch.Tensor, items: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """query (B, D); items (B, C, D) or (C, D) unit vectors; centre (D,) -> (B, C) centred cosines / T."""
        query = F.normalize(self.transform(query), dim=-1)
        items = self.transform(items) - centre
        if items.ndim == 2:
            return query @ items.T / TEMPERATURE
        return (items @ query[..., None]).squeeze(-1) / TEMPERATURE

    def centre(self, table: DomainTable) -> torch.Tensor:
        return self.transform(table.unit).mean(0)


def training_pairs(corpus, domain: str) -> list[tuple[list[str], str]]:
    """(history, next item) at every position of the domain's training sequences."""
    rows = corpus["train"].filter(lambda d: d == domain, input_columns="domain")["items"]
    return [(items[max(0, t - HISTORY_ITEMS) : t], items[t]) for items in rows for t in range(1, len(items))]


def train(head: FrameInvariantHead, tables: dict, pairs: dict, steps: int, seed: int) -> None:
    if not list(head.parameters()):
        return
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    domains = sorted(pairs)
    sizes = torch.tensor([len(pairs[d]) for d in domains], dtype=torch.float).sqrt()  # flatter than by size
    for _ in range(steps):
        domain = domains[int(torch.multinomial(sizes, 1, generator=generator))]
        table, batch = tables[domain], rng.sample(pairs[domain], min(256, len(pairs[domain])))
        vectors = table.history_vectors([history for history, _ in batch])
        targets = torch.tensor([table.row[target] for _, target in batch])
        negatives = torch.randint(len(table.keys), (len(batch), 128), generator=generator)
        candidates = table.unit[torch.cat([targets[:, None], negatives], 1)]  # (B, 1 + 128, D)
        # No centring: it shifts every candidate of a row alike, which the softmax ignores.
        scores = head.scores(head.query(vectors), candidates, torch.zeros(candidates.shape[-1]))
        scores = scores.masked_fill(F.pad(negatives == targets[:, None], (1, 0), value=False), float("-inf"))
        loss = F.cross_entropy(scores, torch.zeros(len(batch), dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def measure(head: FrameInvariantHead, table: DomainTable, data) -> dict[str, float]:
    """Full ranking (history excluded) and candidate scoring on one domain's evaluation users."""
    centre, ranked, scored = head.centre(table), [], []
    for start in range(0, len(data.histories), 256):
        histories = data.histories[start : start + 256]
        query = head.query(table.history_vectors(histories))
        scores = head.scores(query, table.unit, centre)
        for row, history in enumerate(histories):
            scores[row, [table.row[key] for key in set(history)]] = float("-inf")
        ranked += [[table.keys[i] for i in row] for row in scores.topk(10, dim=-1).indices.tolist()]
        rows = [[table.row[k] for k in row] for row in data.candidates[start : start + 256]]
        candidates = table.unit[torch.tensor(rows)]
        scored += head.scores(query, candidates, centre).tolist()
    labels = [[1] + [0] * (len(row) - 1) for row in data.candidates]
    return {**ranking_means(ranked, data.targets, (10,)), **candidate_metrics(scored, labels)}


PARTS = {"history weights": (True, False), "axis weights": (False, True), "both": (True, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_dir", required=True)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument(
        "--pretraining_domains",
        nargs="+",
        default=["amazon14_beauty", "yelp_p5", "amazon18_scientific", "microlens_50k", "xwines", "foursquare_nyc"],
    )
    parser.add_argument(
        "--held_out",
        nargs="+",
        default=["amazon18_scientific", "xwines", "amazon14_beauty", "yelp_p5"],
        help="each is held out in turn (a fold)",
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--users", type=int, default=2000, help="validation users per held-out domain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tokenizer = RecBaseTokenizer.from_pretrained(args.tokenizer_dir)
    corpus = load_corpus(args.corpus_dir)
    tables = {domain: DomainTable(tokenizer, domain) for domain in args.pretraining_domains}
    pairs = {domain: training_pairs(corpus, domain) for domain in args.pretraining_domains}
    results = {"settings": vars(args), "folds": {}}
    for held_out in args.held_out:
        data = build_evaluation_set(corpus, held_out, tables[held_out].keys, "validation", args.users, 20, args.seed)
        fold = {"prior": measure(FrameInvariantHead(False, False, 384), tables[held_out], data)}
        for name, (history_weights, axis_weights) in PARTS.items():
            started = time.perf_counter()
            head = FrameInvariantHead(history_weights, axis_weights, 384)
            train(head, tables, {d: p for d, p in pairs.items() if d != held_out}, args.steps, args.seed)
            fold[name] = {**measure(head, tables[held_out], data), "train_seconds": time.perf_counter() - started}
            print(
                held_out,
                name,
                {k: round(v, 4) for k, v in fold[name].items()},
                "prior",
                {k: round(v, 4) for k, v in fold["prior"].items()},
                flush=True,
            )
        results["folds"][held_out] = fold
        write_json_atomically(RESULTS.with_suffix(".json"), results)  # after each fold: a long run keeps what it did
        write_text_atomically(RESULTS.with_suffix(".md"), markdown(results) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    metrics = ("ndcg@10", "recall@10", "auc", "gauc")
    lines = [
        "| held-out domain | part | " + " | ".join(f"{m} (gain over the prior)" for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for domain, fold in results["folds"].items():
        prior = fold["prior"]
        lines.append(f"| {domain} | prior (no training) | " + " | ".join(f"{prior[m]:.4f}" for m in metrics) + " |")
        for name in PARTS:
            row = fold[name]
            lines.append(
                f"| {domain} | {name} | "
                + " | ".join(f"{row[m]:.4f} ({row[m] - prior[m]:+.4f})" for m in metrics)
                + " |"
            )
    worst = {
        name: {m: min(f[name][m] - f["prior"][m] for f in results["folds"].values()) for m in metrics}
        for name in PARTS
    }
    lines += [
        "",
        "Worst fold's gain over the prior:",
        "",
        "| part | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    lines += [f"| {name} | " + " | ".join(f"{worst[name][m]:+.4f}" for m in metrics) + " |" for name in PARTS]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
