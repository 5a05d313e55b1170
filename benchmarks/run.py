"""The machine-level benchmarks in one command: writes ``BENCHMARKS.md`` and ``BENCHMARKS.json`` at the repo root.

    python -m benchmarks.run            # every section, a few minutes on 2 CPU cores
    python -m benchmarks.run --quick    # every section at small sizes (a smoke run, under two minutes)

Each section runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its own. Each figure is the
median of several timed runs after a warm-up; what a ratio compares is measured in the same process, interleaved.
The sections (``benchmarks/sections.py``):

- ``training``: model FLOP utilisation of pretraining ``recbase-small`` against the measured peak of a large fp32
  matrix multiply (bf16 too on a GPU), and the matmul rate at the model's own matmul shapes;
- ``recommendation``: constrained beam search top-10 (batch 1 and 16) against unconstrained generation of the same
  length and beams; candidate scoring; the pipeline's end-to-end latency for one user (p50 / p95);
- ``indexing``: items/s to embed (the real text encoder), to quantize and to assign IDs at 1k, 10k and 40k items;
- ``scaling``: how ranking costs grow with history length and catalogue size (plotted beside the file);
- ``catalogue``: one domain's pipeline and ``score_candidates`` latency while 0, 100k and 1M other items are indexed,
  beside a plain numpy cosine top-10, and the items file's save and load time at 1M items;
- ``large_indexing``: ``add_items`` of 100k items in one call and of 1M in chunks: items/s, the time split and the
  peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers

from benchmarks.sections import SECTIONS
from training.checkpoint import write_json_atomically, write_text_atomically

REPO_ROOT = Path(__file__).resolve().parents[1]


def describe_machine() -> dict:
    """CPU model, cores and threads, library versions, and the GPU when there is one."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def run_section(name: str, quick: bool) -> dict:
    """One section in a fresh process; its result and peak memory come back as JSON on the last stdout line."""
    command = [sys.executable, "-m", "benchmarks.sections", name] + (["--quick"] if quick else [])
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"benchmark section {name!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot_scaling(scaling: dict, path: Path) -> None:
    """Two panels: latency against history length, and against catalogue size (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), layout="constrained")
    for axis, (key, label) in zip(
        axes, (("history", "history length (items)"), ("catalogue", "catalogue size (items)"))
    ):
        for series, points in scaling[key].items():
            axis.plot([x for x, _ in points], [1000 * y for _, y in points], "o-", label=series, markersize=3)
        axis.set(xscale="log", yscale="log", xlabel=label, ylabel="ms per request")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    with plt.rc_context({"svg.hashsalt": "recbase"}):
        figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def markdown(results: dict, command: str, plot_name: str) -> str:
    machine, training, recommendation, indexing = (
        results[k] for k in ("machine", "training", "recommendation", "indexing")
    )
    lines = [
        f"# Benchmarks\n\n`{command}`, {results['date']}. Medians of repeated runs; each ratio is measured in one "
        "process. Peak memory is the section's own process (`ru_maxrss`, model and libraries included).\n",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"GPU: {machine['gpu'] or 'none'}; Python {machine['python']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}.\n",
        "## Pretraining against the machine's peak\n",
        f"Peak: the fastest fp32 matmul measured in this run (a {training['peak']['size']}^2 square one and the "
        f"model's own shapes, below), {training['peak']['gflops']:.1f} GFLOP/s. Model FLOPs per "
        f"token: {training['flops_formula']}.\n",
        "| shape | tokens/s | achieved GFLOP/s | MFU | target 30% |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['shape']} | {row['tokens_per_second']:.0f} | {row['gflops']:.1f} | {row['mfu']:.1%} | "
        f"{'met' if row['mfu'] >= 0.3 else 'missed'} |"
        for row in training["steps"]
    ]
    lines += [
        "",
        "Every fp32 matmul timed (the model's at the main job's batches of 64 x 29 tokens):",
        "",
        "| matmul (M x K x N) | GFLOP/s | share of peak |",
        "|---|---|---|",
    ]
    lines += [f"| {row['shape']} | {row['gflops']:.1f} | {row['share']:.0%} |" for row in training["matmul_shapes"]]
    lines += [
        "",
        training["reading"],
        "",
        "## Recommendation per request\n",
        "| what | batch | constrained (ms) | unconstrained (ms) | ratio | target <= 1.2x |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| beam search top-10, {row['items']} items | {row['batch']} | {1000 * row['constrained']:.1f} | "
        f"{1000 * row['unconstrained']:.1f} | {row['ratio']:.2f}x | {'met' if row['ratio'] <= 1.2 else 'missed'} |"
        for row in recommendation["beam_search"]
    ]
    scoring, pipe, embed = recommendation["scoring"], recommendation["pipeline"], indexing["embed"]
    lines += [
        "",
        f"Candidate scoring (code head + dense head, one user, {scoring['candidates']} candidates): "
        f"{scoring['candidates_per_second']:.0f} candidates/s.",
        "",
        f"Pipeline, one user, {pipe['items']} items, dense head (the default): p50 {1000 * pipe['p50']:.1f} ms, "
        f"p95 {1000 * pipe['p95']:.1f} ms over {pipe['calls']} calls.",
        "",
        f"Peak memory of this section: {recommendation['peak_rss_gb']:.2f} GB.",
        "",
        "## Item indexing\n",
        f"Embedding with the real text encoder: {embed['texts_per_second']:.0f} texts/s ({embed['texts']} texts, "
        f"{embed['tokens_per_text']:.0f} tokens each as padded). That is {embed['gflops']:.1f} GFLOP/s (2 FLOPs per "
        f"weight outside the embeddings per token), {embed['gflops'] / embed['peak_gflops']:.0%} of a 1024^3 fp32 "
        f"matmul measured in the same process ({embed['peak_gflops']:.1f} GFLOP/s).",
        "",
        "| items | quantize (items/s) | assign IDs (items/s) |",
        "|---|---|---|",
    ]
    lines += [f"| {row['items']} | {row['quantize']:.0f} | {row['assign']:.0f} |" for row in indexing["sizes"]]
    lines += [
        "",
        f"Peak memory: training {training['peak_rss_gb']:.2f} GB, indexing {indexing['peak_rss_gb']:.2f} GB, "
        f"scaling {results['scaling']['peak_rss_gb']:.2f} GB.",
        "",
        *catalogue_markdown(results["catalogue"], results["large_indexing"], indexing["embed"]["texts_per_second"]),
        "## How costs grow\n",
        f"![latency against history length and catalogue size]({plot_name})",
        "",
    ]
    for key in ("history", "catalogue"):
        for series, points in results["scaling"][key].items():
            lines.append(f"- {series}, by {key}: " + ", ".join(f"{x}: {1000 * y:.1f} ms" for x, y in points))
    return "\n".join(lines) + "\n"


def catalogue_markdown(catalogue: dict, large: dict, encoder_rate: float) -> list[str]:
    """The serving cost of one domain beside what else is indexed, and indexing a large catalogue."""
    first = catalogue["rows"][0]
    lines = [
        "## One domain's serving cost, whatever else is indexed\n",
        f"One user, a domain of {first['domain_items']} synthetic items, while other items are indexed too; a plain "
        "numpy cosine top-10 over the same vectors (normalised once) beside it. Targets: pipeline p95 within 1.5x of "
        "its value with nothing else indexed, and at most 3x numpy's.\n",
        "| other items | pipeline p50 / p95 (ms) | p95 / p95 alone | numpy p50 / p95 (ms) | pipeline / numpy p95 | "
        "score_candidates 1,000 p50 / p95 (ms) | numpy over them p50 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in catalogue["rows"]:
        pipe, numpy_row, score = row["pipeline"], row["numpy"], row["score"]
        lines.append(
            f"| {row['other_items']:,} | {1000 * pipe['p50']:.1f} / {1000 * pipe['p95']:.1f} | "
            f"{pipe['p95'] / first['pipeline']['p95']:.2f}x | {1000 * numpy_row['p50']:.1f} / "
            f"{1000 * numpy_row['p95']:.1f} | {pipe['p95'] / numpy_row['p95']:.2f}x | {1000 * score['p50']:.1f} / "
            f"{1000 * score['p95']:.1f} | {1000 * row['numpy_candidates']['p50']:.2f} |"
        )
    last = catalogue["rows"][-1]
    lines += [
        "",
        f"The items file with {last['domain_items'] + last['other_items']:,} items: {last['items_file_mb']:.0f} MB, "
        f"saved in {last['save_seconds']:.1f} s, loaded in {last['load_seconds']:.1f} s. Peak memory of this "
        f"section: {catalogue['peak_rss_gb']:.2f} GB.",
        "",
        "## Indexing a large catalogue\n",
        "`add_items` with the embeddings given (synthetic), one domain: the time split between aligning the domain "
        "(fitted on the first call), quantizing and assigning unique IDs, and the process's peak memory after it. "
        f"The text encoder's own rate on this machine ({encoder_rate:.0f} texts/s, above) bounds indexing from "
        "text: the last column is the whole call's rate with that embedding time added, as a share of the "
        "encoder's.\n",
        "| items | per call | items/s | align / quantize / assign / rest (s) | peak RSS (GB) | with embedding, "
        "share of the encoder's rate |",
        "|---|---|---|---|---|---|",
    ]
    for run in large["runs"]:
        seconds = run["seconds"]
        embedding = run["items"] / encoder_rate
        share = (run["items"] / (embedding + seconds["total"])) / encoder_rate
        lines.append(
            f"| {run['items']:,} | {run['per_call']:,} | {run['items_per_second']:.0f} | {seconds['align']:.1f} / "
            f"{seconds['quantize']:.1f} / {seconds['assign']:.1f} / {seconds['rest']:.1f} | "
            f"{run['peak_rss_gb']:.2f} | {share:.0%} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks every section runs")
    parser.add_argument(
        "--output", default=str(REPO_ROOT / "BENCHMARKS.md"), help="the Markdown file (JSON beside it)"
    )
    args = parser.parse_args(argv)
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": describe_machine(),
    }
    for name in SECTIONS:
        print(f"benchmark section {name} ...", flush=True)
        results[name] = run_section(name, args.quick)
    output = Path(args.output)
    plot = output.with_name(f"{output.stem}_scaling.svg")
    plot_scaling(results["scaling"], plot)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    write_text_atomically(output, markdown(results, command, plot.name))
    write_json_atomically(output.with_suffix(".json"), results)
    print(f"wrote {output}")
    return results


if __name__ == "__main__":
    main()
