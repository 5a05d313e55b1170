"""Speed of RecBase against transformers' own Qwen2ForCausalLM of the same dimensions.

Times, in one run and interleaved (the machine is noisy, so only ratios are compared):
- a training step (forward + backward) in tokens per second;
- batched greedy generation of one item's tokens per history, with the KV cache, in new tokens per second.

    python benchmarks/bench_model.py            # writes benchmarks/results/model.{json,md}
    # the main job's shape (3 x 256 codes + 32, batches of 64 windows of ~29 tokens), to compare with its log:
    python benchmarks/bench_model.py --presets recbase-tiny --codebook_sizes 256 256 256 --disambiguation_size 32 \
        --batch 64 --seq 29 --name main_job_shape
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from modeling_recbase import RecBaseConfig, RecBaseForCausalLM
from training.checkpoint import write_json_atomically, write_text_atomically

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def qwen2_twin(config: RecBaseConfig) -> Qwen2ForCausalLM:
    """A stock Qwen2 with RecBase's dimensions; RecBase's state dict loads into it unchanged."""
    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            rope_theta=config.rope_theta,
            rms_norm_eps=config.rms_norm_eps,
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=config.tie_word_embeddings,
            attn_implementation="sdpa",
        )
    )


def time_training_step(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """Seconds for one forward + backward on (batch, seq) ids."""
    start = time.perf_counter()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def time_generation(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds to greedily generate new_tokens for each row of (batch, seq) with the KV cache."""
    start = time.perf_counter()
    model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        use_cache=True,
    )
    return time.perf_counter() - start


def benchmark_preset(preset: str, batch: int, seq: int, gen_batch: int, repeats: int, **vocabulary) -> dict:
    config = RecBaseConfig.from_preset(preset, **vocabulary)
    torch.manual_seed(0)
    models = {"recbase": RecBaseForCausalLM(config), "qwen2": qwen2_twin(config)}
    models["qwen2"].load_state_dict(models["recbase"].state_dict())
    train_ids = torch.randint(3, config.vocab_size, (batch, seq))
    gen_ids = torch.randint(3, config.vocab_size, (gen_batch, seq))
    new_tokens = config.tokens_per_item
    train_times = {name: [] for name in models}
    gen_times = {name: [] for name in models}
    for model in models.values():  # warm-up
        model.train()
        time_training_step(model, train_ids)
        model.eval()
        time_generation(model, gen_ids, new_tokens)
    for _ in range(repeats):  # interleave the two models so that machine noise hits both alike
        for name, model in models.items():
            model.train()
            train_times[name].append(time_training_step(model, train_ids))
            model.eval()
            gen_times[name].append(time_generation(model, gen_ids, new_tokens))
    result = {
        "preset": preset,
        "parameters": sum(p.numel() for p in models["recbase"].parameters()),
        "train_batch": [batch, seq],
        "generation_batch": [gen_batch, seq],
        "new_tokens": new_tokens,
    }
    for name in models:
        result[f"{name}_train_tokens_per_s"] = batch * seq / statistics.median(train_times[name])
        result[f"{name}_generate_tokens_per_s"] = gen_batch * new_tokens / statistics.median(gen_times[name])
    result["train_ratio"] = result["recbase_train_tokens_per_s"] / result["qwen2_train_tokens_per_s"]
    result["generate_ratio"] = result["recbase_generate_tokens_per_s"] / result["qwen2_generate_tokens_per_s"]
    return result


def write_results(rows: list[dict], name: str) -> None:
    """Write rows to results/<name>.json and a Markdown table, atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    table = [
        "| preset | params | train tok/s RecBase | train tok/s Qwen2 | ratio "
        "| gen tok/s RecBase | gen tok/s Qwen2 | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['preset']} | {r['parameters']:,} | {r['recbase_train_tokens_per_s']:.0f} | "
            f"{r['qwen2_train_tokens_per_s']:.0f} | {r['train_ratio']:.2f} | "
            f"{r['recbase_generate_tokens_per_s']:.0f} | {r['qwen2_generate_tokens_per_s']:.0f} | "
            f"{r['generate_ratio']:.2f} |"
        )
    write_json_atomically(RESULTS_DIR / f"{name}.json", {"meta": meta, "rows": rows})
    write_text_atomically(RESULTS_DIR / f"{name}.md", "\n".join(table) + "\n")
    print("\n".join(table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["recbase-tiny", "recbase-small"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=100, help="20 items of 5 tokens")
    parser.add_argument("--gen_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--codebook_sizes", nargs="+", type=int, default=None, help="default: the preset's (4 x 1024)")
    parser.add_argument("--disambiguation_size", type=int, default=None)
    parser.add_argument("--name", default="model", help="results/<name>.{json,md}")
    args = parser.parse_args()
    vocabulary = {
        key: value
        for key, value in (("codebook_sizes", args.codebook_sizes), ("disambiguation_size", args.disambiguation_size))
        if value is not None
    }
    rows = [
        benchmark_preset(p, args.batch, args.seq, args.gen_batch, args.repeats, **vocabulary) for p in args.presets
    ]
    write_results(rows, args.name)


if __name__ == "__main__":
    main()
