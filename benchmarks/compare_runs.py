"""Compare two main-job folders: every model row of ``eval_results.json``, ``validation.json``, the item IDs and the
weights (what ``benchmarks/results/one_policy_identity.md`` reports).

    python benchmarks/compare_runs.py outputs/run-a/recbase-tiny outputs/run-b/recbase-tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from tokenization_recbase.item_store_recbase import load_items


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def compare(first: Path, second: Path) -> list[str]:
    """One line per finding: each model row that differs, then whether the rest is identical."""
    lines = []
    rows_a, rows_b = read(first, "eval_results.json")["domains"], read(second, "eval_results.json")["domains"]
    identical = 0
    for domain, entry in rows_a.items():
        for model, metrics in entry["models"].items():
            other = rows_b.get(domain, {}).get("models", {}).get(model)
            if metrics == other:
                identical += 1
            else:
                lines.append(f"{domain} / {model}: {metrics} against {other}")
    lines.append(f"model rows identical: {identical}, different: {len(lines)}")
    validation_a, validation_b = read(first, "validation.json"), read(second, "validation.json")
    lines.append(f"validation history identical: {validation_a['history'] == validation_b['history']}")
    codes_a, codes_b = (
        dict(zip(items["keys"], items["codes"].tolist()))
        for items in (load_items(first / "items.safetensors"), load_items(second / "items.safetensors"))
    )
    lines.append(f"item IDs identical: {codes_a == codes_b} ({len(codes_a)} items)")
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    same_weights = weights_a.keys() == weights_b.keys() and all(
        bool((weights_a[k] == weights_b[k]).all()) for k in weights_a
    )
    lines.append(f"weights identical: {same_weights}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    print("\n".join(compare(args.first, args.second)))


if __name__ == "__main__":
    main()
