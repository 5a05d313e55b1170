"""From raw data to a saved RecBase item tokenizer, with a quality report per domain.

    python -m training.fit_item_tokenizer --output_dir outputs/item-tokenizer

Steps: build the corpus (Parquet), write every item as unified text, embed it (cached), fit the CL-VAE on the
items of the pretraining domains together (one shared vocabulary), give them unique IDs, then index the
zero-shot domains with ``add_items`` alone (the frozen quantizer, no retraining), save, and report.

The quantizer is fitted here (the paper's CL-VAE: an RQ-VAE trained with a coarse-to-fine curriculum); the
module itself, alignment and unique IDs are the shipped ``tokenization_recbase.quantization_recbase``:

- MLP encoder and mirrored decoder around residual vector quantization (``ResidualQuantizer``).
- Each level's codebook is k-means initialised on the residuals it will quantize, when the curriculum
  switches the level on (level 1 alone first, then levels 1-2, 1-3, ...).
- Codes left unused are re-initialised on residuals of random items every few epochs (against collapse).
- Loss: reconstruction MSE + codebook and commitment terms (weight 0.25), straight-through gradients.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset

from tokenization_recbase import (
    DEFAULT_TEXT_ENCODER,
    RecBaseTokenizer,
    ResidualQuantizer,
    align,
    align_by_domain,
    assign_unique_codes,
    unified_item_text,
)
from tokenization_recbase.embedding_cache_recbase import EmbeddingCache
from training.arguments import FitArguments, ItemTokenizerArguments, QuantizerFitConfig, parse_arguments
from training.checkpoint import write_json_atomically
from training.corpus import build_corpus, load_corpus
from training.splits import split_domains


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means: points (N, D) -> (k, D) centroids. With fewer than k distinct points, the spare
    centroids are jittered copies (they are re-initialised later if they stay dead)."""
    start = torch.randperm(points.shape[0], generator=generator)[:k]
    centroids = points[start].clone()
    if centroids.shape[0] < k:
        extra = points[torch.randint(points.shape[0], (k - centroids.shape[0],), generator=generator)]
        centroids = torch.cat([centroids, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(-1)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(-1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def quantizer_loss(
    quantizer: ResidualQuantizer, batch: torch.Tensor, levels: int, commitment_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """batch (B, input_dim) -> (total loss, codes (B, levels)) with the first ``levels`` codebooks active."""
    latent = quantizer.encoder(batch)
    codes, residuals = quantizer.quantize(latent, levels)
    quantized = torch.zeros_like(latent)
    codebook_loss = latent.new_zeros(())
    for level, residual in enumerate(residuals):
        chosen = quantizer.codebooks[level][codes[:, level]]
        codebook_loss = (
            codebook_loss
            + F.mse_loss(chosen, residual.detach())
            + commitment_weight * F.mse_loss(residual, chosen.detach())
        )
        quantized = quantized + chosen
    # Straight-through: the decoder sees the quantized latent, gradients flow to the encoder unchanged.
    reconstruction = quantizer.decoder(latent + (quantized - latent).detach())
    return F.mse_loss(reconstruction, batch) + codebook_loss, codes


@torch.no_grad()
def _residuals_at(quantizer: ResidualQuantizer, embeddings: torch.Tensor, level: int) -> torch.Tensor:
    """(N, latent_dim) residuals entering ``level`` (0-based) for every item."""
    latent = quantizer.encoder(embeddings)
    if level == 0:
        return latent
    codes, residuals = quantizer.quantize(latent, level)
    return residuals[-1] - quantizer.codebooks[level - 1][codes[:, -1]]


def fit_quantizer(
    embeddings: torch.Tensor, config: QuantizerFitConfig, log=print
) -> tuple[ResidualQuantizer, list[dict]]:
    """Train the CL-VAE on (N, input_dim) embeddings; returns it (eval mode) and a per-epoch history.

    It runs on one CPU thread: with several, float sums come out in a different order from run to run, one item's
    nearest code flips, and the change cascades through k-means and training until no item keeps its ID
    (``benchmarks/results/restructure_identity.md``). One thread makes the IDs a function of the data and the seed.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_quantizer(embeddings, config, log)
    finally:
        torch.set_num_threads(threads)


def _fit_quantizer(embeddings: torch.Tensor, config: QuantizerFitConfig, log) -> tuple[ResidualQuantizer, list[dict]]:
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    embeddings = embeddings.float()
    quantizer = ResidualQuantizer(embeddings.shape[1], config.hidden_dims, config.latent_dim, config.codebook_sizes)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=config.learning_rate)
    num_levels = len(config.codebook_sizes)
    total_epochs = num_levels * config.epochs_per_level + config.final_epochs
    history: list[dict] = []
    for epoch in range(total_epochs):
        levels = min(num_levels, epoch // config.epochs_per_level + 1)
        if epoch % config.epochs_per_level == 0 and epoch // config.epochs_per_level < num_levels:
            # A level is switched on: start its codebook at k-means centroids of the residuals it will see.
            residuals = _residuals_at(quantizer, embeddings, levels - 1)
            quantizer.codebooks[levels - 1].data.copy_(
                kmeans(residuals, config.codebook_sizes[levels - 1], config.kmeans_iterations, generator)
            )
        quantizer.train()
        order = torch.randperm(embeddings.shape[0], generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            loss, _ = quantizer_loss(
                quantizer, embeddings[order[start : start + config.batch_size]], levels, config.commitment_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * min(config.batch_size, len(order) - start)
        reinitialised = 0
        if (epoch + 1) % config.dead_code_every == 0 and epoch + 1 < total_epochs:
            reinitialised = reinitialise_dead_codes(quantizer, embeddings, levels, generator)
        history.append({"epoch": epoch, "levels": levels, "loss": total / len(order), "reinitialised": reinitialised})
        log(
            f"quantizer epoch {epoch + 1}/{total_epochs} levels={levels} loss={total / len(order):.5f} "
            f"reinitialised={reinitialised}"
        )
    return quantizer.eval(), history


@torch.no_grad()
def reinitialise_dead_codes(
    quantizer: ResidualQuantizer, embeddings: torch.Tensor, levels: int, generator: torch.Generator
) -> int:
    """Move every unused code of the active levels onto the residual of a random item; returns how many."""
    moved = 0
    for level in range(levels):
        residuals = _residuals_at(quantizer, embeddings, level)
        codebook = quantizer.codebooks[level]
        used = torch.bincount(torch.cdist(residuals, codebook).argmin(-1), minlength=codebook.shape[0]) > 0
        dead = (~used).nonzero().squeeze(-1)
        if len(dead):
            donors = torch.randint(residuals.shape[0], (len(dead),), generator=generator)
            codebook.data[dead] = residuals[donors] + 1e-4 * torch.randn(
                len(dead), residuals.shape[1], generator=generator
            )
            moved += len(dead)
    return moved


@torch.no_grad()
def reconstruction_error(quantizer: ResidualQuantizer, embeddings: torch.Tensor) -> dict[str, float]:
    """MSE of decoding the quantized latent, absolute and relative to the embeddings' variance."""
    latent = quantizer.encoder(embeddings.float())
    codes, _ = quantizer.quantize(latent)
    quantized = sum(quantizer.codebooks[level][codes[:, level]] for level in range(codes.shape[1]))
    mse = F.mse_loss(quantizer.decoder(quantized), embeddings.float()).item()
    variance = embeddings.float().var(0).sum().item() / embeddings.shape[1]
    return {"mse": mse, "relative_mse": mse / variance}


def code_usage(codes: torch.Tensor, codebook_sizes: list[int]) -> list[dict[str, float]]:
    """Per level: codes used, the share of the codebook used, and the perplexity of the code distribution."""
    report = []
    for level, size in enumerate(codebook_sizes):
        counts = torch.bincount(codes[:, level], minlength=size).float()
        probabilities = counts[counts > 0] / counts.sum()
        entropy = -(probabilities * probabilities.log()).sum().item()
        report.append(
            {
                "level": level + 1,
                "used": int((counts > 0).sum()),
                "size": size,
                "usage": float((counts > 0).sum() / size),
                "perplexity": math.exp(entropy),
            }
        )
    return report


def collision_rate(identifiers: list[tuple[int, ...]]) -> float:
    """Share of items whose identifier some other item also has."""
    counts = Counter(identifiers)
    return sum(1 for ident in identifiers if counts[ident] > 1) / max(len(identifiers), 1)


__all__ = ["QuantizerFitConfig", "fit_quantizer", "kmeans", "code_usage", "collision_rate", "reconstruction_error"]


def fit_item_tokenizer(
    items: Dataset,
    pretrain_domains: list[str],
    zero_shot_domains: list[str],
    fit_config: QuantizerFitConfig,
    disambiguation_size: int = 64,
    text_encoder: str = DEFAULT_TEXT_ENCODER,
    cache_dir: str | Path | None = None,
    log=print,
) -> tuple[RecBaseTokenizer, dict]:
    """Fit the quantizer on the pretraining domains' items and index every item; returns (tokenizer, report)."""
    domains_present = set(items.unique("domain"))
    for domain in pretrain_domains + zero_shot_domains:
        if domain not in domains_present:
            raise ValueError(f"domain {domain!r} has no items in the corpus (it has {sorted(domains_present)})")
    items = items.filter(lambda domain: domain in set(pretrain_domains + zero_shot_domains), input_columns="domain")
    keys, domains = items["key"], items["domain"]
    texts = [unified_item_text(row) for row in items]
    embeddings = EmbeddingCache(text_encoder, cache_dir).embed(texts)
    pretrain = torch.tensor([domain in pretrain_domains for domain in domains])
    rows_of = defaultdict(list)
    for row, domain in enumerate(domains):
        rows_of[domain].append(row)

    # Each pretraining domain in its own principal frame (an isometry), so the domains share coarse codes.
    alignments: dict[str, dict[str, torch.Tensor]] = {}
    aligned = torch.zeros(embeddings.shape)
    index = pretrain.nonzero().squeeze(-1)
    aligned[index] = align_by_domain(embeddings[index], [domains[i] for i in index.tolist()], alignments)
    # Many items share a text (Yelp businesses with the same categories): fit on distinct embeddings only, so
    # duplicates do not pull codebooks onto themselves.
    distinct = torch.unique(aligned[pretrain], dim=0)
    log(f"fitting the quantizer on {len(distinct)} distinct embeddings of {int(pretrain.sum())} pretraining items")
    quantizer, history = fit_quantizer(distinct, fit_config, log=log)

    tokenizer = RecBaseTokenizer(
        codebook_sizes=fit_config.codebook_sizes, disambiguation_size=disambiguation_size, text_encoder=text_encoder
    )
    tokenizer.set_quantizer(quantizer, alignments)
    ids = assign_unique_codes(*quantizer.encode_to_codes(aligned[index]), set(), disambiguation_size)
    tokenizer.set_items(
        {keys[i]: ident for i, ident in zip(index.tolist(), ids)}, {keys[i]: texts[i] for i in index.tolist()}
    )
    tokenizer.set_item_vectors(dict(zip((keys[i] for i in index.tolist()), aligned[index])))
    for domain in zero_shot_domains:  # cold start: the frozen quantizer alone, as a user would do it
        rows = rows_of[domain]
        tokenizer.add_items([keys[i] for i in rows], texts=[texts[i] for i in rows], embeddings=embeddings[rows])
        # For the report: the raw codes of these items in the frame add_items fitted.
        aligned[rows] = align(embeddings[rows], tokenizer.domain_alignments[domain])
    raw_codes, _ = quantizer.encode_to_codes(aligned)
    report = quality_report(tokenizer, keys, domains, raw_codes, pretrain_domains)
    report.update(
        config={**asdict(fit_config), "disambiguation_size": disambiguation_size, "text_encoder": text_encoder},
        reconstruction=reconstruction_error(quantizer, distinct),
        history=history,
    )
    return tokenizer, report


def quality_report(
    tokenizer: RecBaseTokenizer,
    keys: list[str],
    domains: list[str],
    raw_codes: torch.Tensor,
    pretrain_domains: list[str],
) -> dict:
    """Per-level usage, collisions before/after, shared vocabulary across domains, for the corpus and per domain."""
    levels = len(tokenizer.codebook_sizes)
    final = [tokenizer.item_codes[key] for key in keys]
    level_codes = torch.tensor([ident[:levels] for ident in final])
    raw = [tuple(row) for row in raw_codes.tolist()]
    before_disambiguation = [ident[:levels] for ident in final]
    report: dict = {
        "items": len(keys),
        "unique_ids": len(set(final)) == len(final),
        "levels": code_usage(level_codes, tokenizer.codebook_sizes),
        "collision_rate_raw": collision_rate(raw),
        "collision_rate_before_disambiguation": collision_rate(before_disambiguation),
        "collision_rate_final": collision_rate(final),
        "domains": {},
    }
    raw_counts, before_counts = Counter(raw), Counter(before_disambiguation)
    domains_of_code: list[dict[int, set[str]]] = [defaultdict(set) for _ in range(levels)]
    for domain_name, ident in zip(domains, final):
        for level in range(levels):
            domains_of_code[level][ident[level]].add(domain_name)
    for domain in dict.fromkeys(domains):
        rows = [i for i, d in enumerate(domains) if d == domain]
        report["domains"][domain] = {
            "role": "pretraining" if domain in pretrain_domains else "zero-shot",
            "items": len(rows),
            "unique_ids": len({final[i] for i in rows}) == len(rows),
            "collision_rate_raw": sum(raw_counts[raw[i]] > 1 for i in rows) / len(rows),
            "collision_rate_before_disambiguation": sum(before_counts[before_disambiguation[i]] > 1 for i in rows)
            / len(rows),
            "levels": code_usage(level_codes[rows], tokenizer.codebook_sizes),
        }
    report["codes_shared_by_domains"] = []
    for level, codes in enumerate(domains_of_code):
        pretraining = {code: users & set(pretrain_domains) for code, users in codes.items()}
        pretraining = {code: users for code, users in pretraining.items() if users}
        report["codes_shared_by_domains"].append(
            {
                "level": level + 1,
                "share_used_by_more_than_one_domain": sum(len(d) > 1 for d in codes.values()) / max(len(codes), 1),
                "share_used_by_more_than_one_pretraining_domain": sum(len(d) > 1 for d in pretraining.values())
                / max(len(pretraining), 1),
            }
        )
    return report


def report_markdown(report: dict) -> str:
    """The report as a Markdown table: one row per domain, then the shared-vocabulary line."""
    levels = len(report["levels"])
    header = ["domain", "role", "items", "collide (raw)", "collide (before disamb.)", "unique IDs"] + [
        f"L{level + 1} used" for level in range(levels)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(report["domains"].items()) + [("all", {**report, "role": "-"})]
    for domain, stats in rows:
        usage = [f"{lv['used']}/{lv['size']} (ppl {lv['perplexity']:.0f})" for lv in stats["levels"]]
        lines.append(
            f"| {domain} | {stats['role']} | {stats['items']} | {stats['collision_rate_raw']:.1%} | "
            f"{stats['collision_rate_before_disambiguation']:.1%} | {stats['unique_ids']} | "
            + " | ".join(usage)
            + " |"
        )
    shared = ", ".join(
        f"L{s['level']} {s['share_used_by_more_than_one_domain']:.0%} "
        f"({s['share_used_by_more_than_one_pretraining_domain']:.0%})"
        for s in report["codes_shared_by_domains"]
    )
    lines.append(
        f"\nCodes used by more than one domain (by more than one pretraining domain): {shared}. "
        f"Reconstruction MSE {report['reconstruction']['mse']:.2e} "
        f"(relative {report['reconstruction']['relative_mse']:.2f})."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args, vocabulary = parse_arguments((FitArguments, ItemTokenizerArguments), argv, __doc__)
    pretrain_domains, zero_shot_domains = split_domains(args.domains, args.zero_shot)
    output_dir = Path(args.output_dir)
    corpus = load_corpus(build_corpus(args.domains, output_dir / "corpus", data_dir=args.data_dir))
    fit_config = QuantizerFitConfig(codebook_sizes=vocabulary.codebook_sizes, seed=args.seed)
    tokenizer, report = fit_item_tokenizer(
        corpus["items"],
        pretrain_domains,
        zero_shot_domains,
        fit_config,
        vocabulary.disambiguation_size,
        vocabulary.text_encoder,
        args.cache_dir,
    )
    tokenizer.save_pretrained(output_dir)
    write_json_atomically(output_dir / "item_tokenizer_report.json", report)
    print(report_markdown(report))


if __name__ == "__main__":
    main()
