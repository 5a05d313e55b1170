"""Would an int8 text encoder index items faster without changing their IDs? torch's dynamic int8 quantization of
the encoder's linear layers (built into torch: no new dependency) against the fp32 encoder, on the bundled domains.

    python benchmarks/encoder_int8.py --checkpoint outputs/recbase-tiny --per_domain 500

For a sample of each domain's items: texts/s of both encoders on the same texts (interleaved), the cosine between
the two embeddings, and the share of items whose quantizer codes (every level, in the domain's frame, before the
unique-ID assignment) are the same. The rule (issue 21): adopt it only if at least 99% of items keep their codes.
Writes ``benchmarks/results/encoder_int8.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenization_recbase import TextEncoder, align  # noqa: E402
from training.checkpoint import load_checkpoint, write_json_atomically, write_text_atomically  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.99


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="outputs/recbase-tiny")
    parser.add_argument("--per_domain", type=int, default=500)
    args = parser.parse_args(argv)
    _, tokenizer = load_checkpoint(args.checkpoint)
    full = TextEncoder(tokenizer.text_encoder, max_length=tokenizer.text_max_length)
    int8 = copy.copy(full)
    int8.model = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(full.model), {torch.nn.Linear}, dtype=torch.qint8
    )
    rows, seconds = {}, {"fp32": 0.0, "int8": 0.0}
    for domain in sorted(tokenizer.domains):
        keys = tokenizer.domain_items(domain)[: args.per_domain]
        texts = [tokenizer.item_text(key) for key in keys]
        embeddings = {}
        for name, encoder in (("fp32", full), ("int8", int8)):  # one after the other on the same texts
            start = time.perf_counter()
            embeddings[name] = encoder.encode(texts)
            seconds[name] += time.perf_counter() - start
        alignment = tokenizer.domain_alignments[domain]
        codes = {
            name: tokenizer.quantizer.encode_to_codes(align(vectors, alignment))[0]
            for name, vectors in embeddings.items()
        }
        same = (codes["fp32"] == codes["int8"]).all(-1).float().mean().item()
        first = (codes["fp32"][:, 0] == codes["int8"][:, 0]).float().mean().item()
        cosine = torch.nn.functional.cosine_similarity(embeddings["fp32"], embeddings["int8"]).mean().item()
        rows[domain] = {"items": len(keys), "same_codes": same, "same_first_code": first, "cosine": cosine}
    texts_total = sum(row["items"] for row in rows.values())
    results = {
        "command": f"python benchmarks/encoder_int8.py --checkpoint {args.checkpoint} --per_domain {args.per_domain}",
        "texts_per_second": {name: texts_total / value for name, value in seconds.items()},
        "domains": rows,
        "worst_same_codes": min(row["same_codes"] for row in rows.values()),
        "target": TARGET,
    }
    results["adopted"] = results["worst_same_codes"] >= TARGET
    RESULTS.mkdir(exist_ok=True)
    write_json_atomically(RESULTS / "encoder_int8.json", results)
    speed = results["texts_per_second"]
    lines = [
        "# An int8 text encoder: faster, with the same item IDs?\n",
        f"`{results['command']}`. torch dynamic int8 quantization of the encoder's linear layers against fp32, on the "
        "same texts. Codes: the quantizer's codes of every level in the domain's frame, before unique IDs.\n",
        f"Speed: fp32 {speed['fp32']:.0f} texts/s, int8 {speed['int8']:.0f} texts/s "
        f"({speed['int8'] / speed['fp32']:.2f}x).\n",
        "| domain | items | same codes (all levels) | same first code | mean cosine fp32 / int8 |",
        "|---|---|---|---|---|",
        *(
            f"| {domain} | {row['items']} | {row['same_codes']:.1%} | {row['same_first_code']:.1%} | "
            f"{row['cosine']:.4f} |"
            for domain, row in rows.items()
        ),
        "",
        f"Rule: adopt only if every domain keeps at least {TARGET:.0%} of its codes. Worst domain "
        f"{results['worst_same_codes']:.1%}: {'adopted' if results['adopted'] else 'not adopted'}.",
        "",
    ]
    write_text_atomically(RESULTS / "encoder_int8.md", "\n".join(lines))
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
