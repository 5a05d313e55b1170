"""From raw data to a saved RecBase item tokenizer, with a quality report per domain.

    python -m training.fit_item_tokenizer --output_dir outputs/item-tokenizer

Steps: build the corpus (Parquet), write every item as unified text, embed it (cached), fit the CL-VAE on the
items of the pretraining domains together (one shared vocabulary), give them unique IDs, then index the
zero-shot domains with ``add_items`` alone (the frozen quantizer, no retraining), save, and report.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset

from tokenization_recbase import DEFAULT_TEXT_ENCODER, RecBaseTokenizer, align, assign_unique_codes, fit_domain_alignment
from training.atomic import write_json_atomically
from training.corpus import BUNDLED_DOMAINS, DEFAULT_DATA_DIR, DEFAULT_ZERO_SHOT_DOMAINS, build_corpus, load_corpus, split_domains
from training.embedding import DEFAULT_CACHE_DIR, EmbeddingCache
from tokenization_recbase import unified_item_text
from training.quantizer import QuantizerFitConfig, code_usage, collision_rate, fit_quantizer, reconstruction_error


def fit_item_tokenizer(
    items: Dataset,
    pretrain_domains: list[str],
    zero_shot_domains: list[str],
    fit_config: QuantizerFitConfig,
    disambiguation_size: int = 64,
    text_encoder: str = DEFAULT_TEXT_ENCODER,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
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
    alignments = {domain: fit_domain_alignment(embeddings[rows_of[domain]]) for domain in pretrain_domains}
    aligned = torch.empty(embeddings.shape)
    for domain in pretrain_domains:
        aligned[rows_of[domain]] = align(embeddings[rows_of[domain]], alignments[domain])
    # Many items share a text (Yelp businesses with the same categories): fit on distinct embeddings only, so
    # duplicates do not pull codebooks onto themselves.
    distinct = torch.unique(aligned[pretrain], dim=0)
    log(f"fitting the quantizer on {len(distinct)} distinct embeddings of {int(pretrain.sum())} pretraining items")
    quantizer, history = fit_quantizer(distinct, fit_config, log=log)

    tokenizer = RecBaseTokenizer(codebook_sizes=fit_config.codebook_sizes, disambiguation_size=disambiguation_size,
                                 text_encoder=text_encoder)
    tokenizer.set_quantizer(quantizer, alignments)
    index = pretrain.nonzero().squeeze(-1)
    ids = assign_unique_codes(*quantizer.encode_to_codes(aligned[index]), set(), disambiguation_size)
    tokenizer.set_items({keys[i]: ident for i, ident in zip(index.tolist(), ids)},
                        {keys[i]: texts[i] for i in index.tolist()})
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
    tokenizer: RecBaseTokenizer, keys: list[str], domains: list[str], raw_codes: torch.Tensor, pretrain_domains: list[str]
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
            "collision_rate_before_disambiguation": sum(before_counts[before_disambiguation[i]] > 1 for i in rows) / len(rows),
            "levels": code_usage(level_codes[rows], tokenizer.codebook_sizes),
        }
    report["codes_shared_by_domains"] = []
    for level, codes in enumerate(domains_of_code):
        pretraining = {code: users & set(pretrain_domains) for code, users in codes.items()}
        pretraining = {code: users for code, users in pretraining.items() if users}
        report["codes_shared_by_domains"].append({
            "level": level + 1,
            "share_used_by_more_than_one_domain": sum(len(d) > 1 for d in codes.values()) / max(len(codes), 1),
            "share_used_by_more_than_one_pretraining_domain":
                sum(len(d) > 1 for d in pretraining.values()) / max(len(pretraining), 1),
        })
    return report


def report_markdown(report: dict) -> str:
    """The report as a Markdown table: one row per domain, then the shared-vocabulary line."""
    levels = len(report["levels"])
    header = ["domain", "role", "items", "collide (raw)", "collide (before disamb.)", "unique IDs"] + [
        f"L{level + 1} used" for level in range(levels)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(report["domains"].items()) + [("all", {**report, "role": "-"})]
    for domain, stats in rows:
        usage = [f"{lv['used']}/{lv['size']} (ppl {lv['perplexity']:.0f})" for lv in stats["levels"]]
        lines.append(f"| {domain} | {stats['role']} | {stats['items']} | {stats['collision_rate_raw']:.1%} | "
                     f"{stats['collision_rate_before_disambiguation']:.1%} | {stats['unique_ids']} | " + " | ".join(usage) + " |")
    shared = ", ".join(f"L{s['level']} {s['share_used_by_more_than_one_domain']:.0%} "
                       f"({s['share_used_by_more_than_one_pretraining_domain']:.0%})" for s in report["codes_shared_by_domains"])
    lines.append(f"\nCodes used by more than one domain (by more than one pretraining domain): {shared}. "
                 f"Reconstruction MSE {report['reconstruction']['mse']:.2e} "
                 f"(relative {report['reconstruction']['relative_mse']:.2f}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/item-tokenizer")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--domains", nargs="+", default=list(BUNDLED_DOMAINS))
    parser.add_argument("--zero_shot", nargs="*", default=list(DEFAULT_ZERO_SHOT_DOMAINS),
                        help="domains that get IDs through add_items only (never fitted on)")
    parser.add_argument("--codebook_sizes", nargs="+", type=int, default=QuantizerFitConfig().codebook_sizes)
    parser.add_argument("--disambiguation_size", type=int, default=64)
    parser.add_argument("--text_encoder", default=DEFAULT_TEXT_ENCODER)
    parser.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--epochs_per_level", type=int, default=QuantizerFitConfig.epochs_per_level)
    parser.add_argument("--final_epochs", type=int, default=QuantizerFitConfig.final_epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pretrain_domains, zero_shot_domains = split_domains(args.domains, args.zero_shot)
    output_dir = Path(args.output_dir)
    corpus = load_corpus(build_corpus(args.domains, output_dir / "corpus", data_dir=args.data_dir))
    fit_config = QuantizerFitConfig(codebook_sizes=args.codebook_sizes, epochs_per_level=args.epochs_per_level,
                                    final_epochs=args.final_epochs, seed=args.seed)
    tokenizer, report = fit_item_tokenizer(corpus["items"], pretrain_domains, zero_shot_domains, fit_config,
                                           args.disambiguation_size, args.text_encoder, args.cache_dir)
    tokenizer.save_pretrained(output_dir)
    write_json_atomically(output_dir / "item_tokenizer_report.json", report)
    print(report_markdown(report))


if __name__ == "__main__":
    main()
