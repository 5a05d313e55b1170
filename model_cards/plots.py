"""The model card's charts, drawn with matplotlib from the run's own files and written as SVG.

- ``training_loss.svg``: the pretraining loss by optimizer step and, when the run selected its checkpoint, the
  validation metric on a second axis with the kept step marked.
- ``zero_shot.svg``: for each zero-shot domain, RecBase against text similarity and random (AUC and NDCG@10).

The files are deterministic (no date, fixed SVG ids), so rerunning the card on the same run changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from training.checkpoint import write_atomically  # noqa: E402
from training.protocols import RANDOM, RECBASE, RECBASE_PRIOR, TEXT_SIMILARITY  # noqa: E402

# Fixed SVG element ids and no timestamp, so equal figures give byte-equal files.
SVG_OPTIONS = {"format": "svg", "metadata": {"Date": None}}
MODELS = ((RECBASE, "#1f77b4"), (RECBASE_PRIOR, "#9ecae1"), (TEXT_SIMILARITY, "#ff7f0e"), (RANDOM, "#7f7f7f"))
ZERO_SHOT_METRICS = (("auc", "AUC (1 positive + negatives)"), ("ndcg@10", "NDCG@10 (full ranking)"))


def save_svg(figure: plt.Figure, path: Path) -> None:
    with plt.rc_context({"svg.hashsalt": "recbase"}):
        write_atomically(path, lambda temporary: figure.savefig(temporary, **SVG_OPTIONS))
    plt.close(figure)


def plot_training_loss(losses: list[tuple[int, float]], validation: dict | None, path: Path) -> None:
    """Loss by optimizer step; with ``validation`` (``validation.json``), its metric on the right axis and the
    kept step as a dashed line."""
    figure, loss_axis = plt.subplots(figsize=(6.4, 3.2), layout="constrained")
    loss_axis.plot([step for step, _ in losses], [loss for _, loss in losses], color="#1f77b4", linewidth=1.2)
    loss_axis.set(xlabel="optimizer step", ylabel="training loss (next concept token)")
    loss_axis.grid(alpha=0.3)
    if validation:
        metric, history = validation["best"]["metric"], validation["history"]
        metric_axis = loss_axis.twinx()
        metric_axis.plot(
            [entry["step"] for entry in history],
            [entry[metric] for entry in history],
            "o-",
            color="#2ca02c",
            markersize=3,
            linewidth=1,
        )
        metric_axis.set_ylabel(f"validation {metric}", color="#2ca02c")
        loss_axis.axvline(
            validation["best"]["step"],
            color="#2ca02c",
            linestyle="--",
            linewidth=1,
            label=f"kept step {validation['best']['step']}",
        )
        loss_axis.legend(loc="upper right", fontsize=8)
    loss_axis.set_title("Pretraining", fontsize=10)
    save_svg(figure, path)


def plot_zero_shot(eval_results: dict, path: Path) -> bool:
    """Grouped bars per zero-shot domain, one panel per metric; False (and no file) without zero-shot domains."""
    domains = [name for name, entry in eval_results["domains"].items() if entry["role"] == "zero-shot"]
    if not domains:
        return False
    figure, axes = plt.subplots(1, len(ZERO_SHOT_METRICS), figsize=(6.4, 3.0), layout="constrained")
    shown = [(model, colour) for model, colour in MODELS if model in eval_results["domains"][domains[0]]["models"]]
    width = 0.8 / len(shown)
    for axis, (metric, label) in zip(axes, ZERO_SHOT_METRICS):
        for index, (model, colour) in enumerate(shown):
            values = [eval_results["domains"][domain]["models"][model][metric] for domain in domains]
            positions = [position + (index - (len(shown) - 1) / 2) * width for position in range(len(domains))]
            axis.bar(positions, values, width, label=model, color=colour)
        axis.set_xticks(range(len(domains)), domains, fontsize=8)
        axis.set_title(label, fontsize=9)
        axis.set_ylim(bottom=0)
        axis.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("Zero-shot domains (never trained on)", fontsize=10)
    save_svg(figure, path)
    return True
