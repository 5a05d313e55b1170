"""Model card of a trained RecBase folder, filled from the run's own files.

    python -m model_cards.generate outputs/recbase-tiny [--model_id ORG/NAME]

Reads ``config.json``, ``eval_results.json`` (with its ``run`` section), ``item_tokenizer_report.json`` and
``logs/train_log.jsonl`` from the folder and writes ``README.md`` (``huggingface_hub.ModelCard`` rendered from
``recbase_card.md.j2``, metadata with ``eval_results`` and the ``custom_code`` tag), ``training_loss.svg`` and
``code_usage.svg`` beside them. The usage snippet names ``--model_id`` (default: the folder's path), so it
runs as written.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from tokenization_recbase import RecBaseTokenizer
from training.checkpoint import write_text_atomically
from training.protocols import RECBASE, TEXT_SIMILARITY, all_results_markdown

TEMPLATE = Path(__file__).with_name("recbase_card.md.j2")
# The card's metadata carries the model's own numbers of both protocols.
CARD_METRICS = {"recall@10": "Recall@10 (full ranking)", "ndcg@10": "NDCG@10 (full ranking)",
                "auc": "AUC (1 positive + negatives)", "gauc": "GAUC (1 positive + negatives)"}


def svg_line_chart(points: list[tuple[float, float]], title: str, x_label: str, y_label: str,
                   width: int = 480, height: int = 240) -> str:
    """A minimal SVG line chart (no plotting dependency): axes, min/max ticks, one polyline."""
    left, right, top, bottom = 56, 12, 28, 36
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_min, x_max, y_min, y_max = min(xs), max(xs), min(ys), max(ys)
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or 1.0

    def place(x: float, y: float) -> str:
        px = left + (x - x_min) / x_span * (width - left - right)
        py = height - bottom - (y - y_min) / y_span * (height - top - bottom)
        return f"{px:.1f},{py:.1f}"

    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y_max:.3g}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{y_min:.3g}</text>',
        f'<text x="{left}" y="{height - bottom + 14}" text-anchor="middle">{x_min:g}</text>',
        f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="end">{x_max:g}</text>',
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{escape(y_label)}</text>',
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{" ".join(place(x, y) for x, y in points)}"/>',
        "</svg>",
    ])


def svg_bar_chart(bars: list[tuple[str, float]], title: str, width: int = 480, height: int = 240) -> str:
    """A minimal SVG bar chart of shares in [0, 1], one labelled bar each."""
    left, top, bottom = 40, 28, 36
    slot = (width - left - 12) / max(len(bars), 1)
    area = height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 12}" y2="{height - bottom}" stroke="black"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">100%</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0%</text>']
    for index, (label, share) in enumerate(bars):
        x, bar_height = left + index * slot + slot * 0.15, area * max(0.0, min(1.0, share))
        parts += [f'<rect x="{x:.1f}" y="{height - bottom - bar_height:.1f}" width="{slot * 0.7:.1f}" '
                  f'height="{bar_height:.1f}" fill="#1f77b4"/>',
                  f'<text x="{x + slot * 0.35:.1f}" y="{height - bottom + 14}" text-anchor="middle">{escape(label)}</text>']
    return "\n".join(parts + ["</svg>"])


def _above_or_below(ours: float, baseline: float) -> str:
    return "above" if ours > baseline else "below"


def summary_lines(eval_results: dict) -> list[str]:
    """One plain sentence per evaluated domain: RecBase against the text-similarity baseline, both protocols."""
    lines = []
    for domain, entry in eval_results["domains"].items():
        ours, text = entry["models"][RECBASE], entry["models"].get(TEXT_SIMILARITY)
        line = (f"{domain} ({entry['role']}, {entry['users']} test users): NDCG@10 {ours['ndcg@10']:.4f}, "
                f"Recall@10 {ours['recall@10']:.4f}, AUC {ours['auc']:.3f}")
        if text:
            line += (f"; text similarity has NDCG@10 {text['ndcg@10']:.4f} and AUC {text['auc']:.3f}, so RecBase is "
                     f"{_above_or_below(ours['ndcg@10'], text['ndcg@10'])} it on NDCG@10 and "
                     f"{_above_or_below(ours['auc'], text['auc'])} it on AUC.")
        lines.append(line)
    return lines


def usage_snippet(model_ref: str, history: list[str], domain: str) -> str:
    return "\n".join([
        "from transformers import pipeline",
        "",
        f'recommend = pipeline("next-item-generation", model="{model_ref}", trust_remote_code=True)',
        f"for item in recommend({{\"history\": {json.dumps(history)}}}, top_k=5, domain=\"{domain}\"):",
        '    print(f"{item[\'score\']:8.3f}  {item[\'item\']}  {item[\'text\'][:60]!r}")',
    ])


def count_parameters(checkpoint_dir: Path) -> int:
    """Parameters stored in the safetensors files (tied weights once), read from their headers only."""
    total = 0
    for path in sorted(checkpoint_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def card_eval_results(eval_results: dict) -> list[EvalResult]:
    return [
        EvalResult(task_type="next-item-recommendation", task_name="Next-item recommendation", dataset_type=domain,
                   dataset_name=f"{domain} ({entry['role']})", dataset_split="test (leave-one-out)",
                   metric_type=metric, metric_name=label, metric_value=round(entry["models"][RECBASE][metric], 5))
        for domain, entry in eval_results["domains"].items() for metric, label in CARD_METRICS.items()
    ]


def build_model_card(checkpoint_dir: str | Path, model_id: str | None = None) -> tuple[ModelCard, dict[str, str]]:
    """The card and the plots (file name -> SVG text) of a trained RecBase folder."""
    checkpoint_dir = Path(checkpoint_dir)
    needed = ["config.json", "eval_results.json", "item_tokenizer_report.json", "logs/train_log.jsonl"]
    missing = [name for name in needed if not (checkpoint_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{checkpoint_dir}: {', '.join(missing)} missing; a card is made from a finished run "
                                "of python -m training.main")
    config = json.loads((checkpoint_dir / "config.json").read_text())
    eval_results = json.loads((checkpoint_dir / "eval_results.json").read_text())
    tokenizer_report = json.loads((checkpoint_dir / "item_tokenizer_report.json").read_text())
    train_log = [json.loads(line) for line in (checkpoint_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    losses = [(record["step"], record["loss"]) for record in train_log if "loss" in record]
    run = eval_results["run"]
    tokenizer = RecBaseTokenizer.from_pretrained(checkpoint_dir)
    example_domain = next(iter(eval_results["domains"]))
    model_ref = model_id or str(checkpoint_dir.resolve())
    model_name = model_id.split("/")[-1] if model_id else checkpoint_dir.resolve().name

    card_data = ModelCardData(
        license="other", license_name="research-only-data", library_name="transformers", model_name=model_name,
        tags=["recommendation", "generative-recommendation", "zero-shot", "semantic-ids", "recbase", "custom_code"],
        eval_results=card_eval_results(eval_results),
    )
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=model_name, summary=summary_lines(eval_results),
        usage_snippet=usage_snippet(model_ref, tokenizer.domain_items(example_domain)[:3], example_domain),
        text_encoder=tokenizer.text_encoder, preset=run["preset"], parameters=count_parameters(checkpoint_dir),
        config=config, max_history_items=config.get("max_history_items", 20),
        pretrain_domains=run["pretrain_domains"], zero_shot_domains=run["zero_shot"],
        tokenizer_report=tokenizer_report, run=run, hardware=run.get("hardware", "unrecorded hardware"),
        train_steps=losses[-1][0] if losses else 0, eval_results=eval_results, results_table=all_results_markdown(eval_results),
    )
    levels = tokenizer_report["levels"]
    plots = {
        "training_loss.svg": svg_line_chart(losses, "Pretraining loss (next concept token)", "optimizer step", "loss"),
        "code_usage.svg": svg_bar_chart([(f"L{level['level']} {level['used']}/{level['size']}", level["usage"]) for level in levels],
                                        "Share of each codebook level used by the items"),
    }
    return card, plots


def write_model_card(checkpoint_dir: str | Path, model_id: str | None = None) -> Path:
    """Write README.md and the plots into the folder (each file atomically); returns the README path."""
    checkpoint_dir = Path(checkpoint_dir)
    card, plots = build_model_card(checkpoint_dir, model_id)
    for name, svg in plots.items():
        write_text_atomically(checkpoint_dir / name, svg + "\n")
    write_text_atomically(checkpoint_dir / "README.md", str(card))
    return checkpoint_dir / "README.md"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--model_id", default=None, help="Hub id the usage snippet names (default: the folder path)")
    args = parser.parse_args(argv)
    path = write_model_card(args.checkpoint_dir, args.model_id)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
