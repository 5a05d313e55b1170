"""Memory plan of fully sharded training (``training/accelerate_configs/fsdp.yaml``) per GPU, from the model built
on the meta device (no memory, exact parameter counts).

    python -m benchmarks.memory_plan            # recbase-1.5b, the paper's 4 x 1024 codes + 64
    python -m benchmarks.memory_plan --preset recbase-small --codebook_sizes 256 256 256 --disambiguation_size 32

Per rank, FSDP full sharding (``reshard_after_forward``) keeps 1/N of: fp32 master parameters (4 bytes each),
fp32 gradients (4) and AdamW's two fp32 moments (8): 16 bytes per parameter / N. On top, while a layer runs, its
parameters are gathered whole in bf16 (2 bytes each, the largest layer, twice for prefetch), and activations,
which depend on batch and sequence length and are not counted here. Writes ``benchmarks/results/memory_plan.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from modeling_recbase import RecBaseConfig, RecBaseForCausalLM
from training.checkpoint import write_text_atomically

RESULTS = Path(__file__).resolve().parent / "results" / "memory_plan.md"
BYTES_PER_PARAMETER = {"fp32 parameters": 4, "fp32 gradients": 4, "AdamW moments (fp32)": 8}
GIB = 1024**3


def memory_plan(config: RecBaseConfig, world_sizes: tuple[int, ...] = (1, 8, 64)) -> dict:
    """Parameter counts and per-rank GiB of each state, for each world size."""
    with torch.device("meta"):
        model = RecBaseForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    layer = max(sum(p.numel() for p in block.parameters()) for block in model.model.layers)
    plan = {"parameters": parameters, "largest_layer_parameters": layer, "world_sizes": {}}
    for world in world_sizes:
        states = {name: parameters * size / world / GIB for name, size in BYTES_PER_PARAMETER.items()}
        states["gathered bf16 layers (2, prefetch)"] = 2 * layer * 2 / GIB
        plan["world_sizes"][world] = {**states, "total": sum(states.values())}
    return plan


def plan_markdown(name: str, plan: dict) -> str:
    worlds = list(plan["world_sizes"])
    rows = list(next(iter(plan["world_sizes"].values())))
    lines = [
        f"`{name}`: {plan['parameters'] / 1e9:.3f}B parameters, largest decoder layer "
        f"{plan['largest_layer_parameters'] / 1e6:.1f}M. GiB per rank, activations not included:",
        "",
        "| state | " + " | ".join(f"{w} GPU{'s' if w > 1 else ''}" for w in worlds) + " |",
        "|---|" + "---|" * len(worlds),
    ]
    lines += [f"| {row} | " + " | ".join(f"{plan['world_sizes'][w][row]:.2f}" for w in worlds) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="recbase-1.5b")
    parser.add_argument("--codebook_sizes", nargs="+", type=int, default=[1024, 1024, 1024, 1024])
    parser.add_argument("--disambiguation_size", type=int, default=64)
    args = parser.parse_args(argv)
    config = RecBaseConfig.from_preset(
        args.preset, codebook_sizes=args.codebook_sizes, disambiguation_size=args.disambiguation_size
    )
    plan = memory_plan(config)
    text = plan_markdown(args.preset, plan)
    write_text_atomically(RESULTS, __doc__ + "\n" + text + "\n")
    print(text)
    return plan


if __name__ == "__main__":
    main()
