"""Assemble a Hub-ready folder from a trained RecBase run, and upload it when asked.

    python -m training.export --checkpoint outputs/recbase-tiny --output_dir outputs/hub/recbase-tiny
    python -m training.export --checkpoint outputs/recbase-tiny --push_to_hub ORG/recbase-tiny [--token hf_...]
    python -m training.export --checkpoint outputs/adapt/my_movies/train-1/lora --base_model_id ORG/recbase-tiny

The folder holds what a Hub user needs and nothing of the training state (no optimizer checkpoints):
weights, ``config.json`` with ``auto_map`` and ``custom_pipelines``, the generation config, the tokenizer
(item table and quantizer), the shipped code (configuration, modeling, tokenization, pipeline), the model
card naming ``ORG/NAME`` in its usage snippet, its plots, and the evaluation and item-tokenizer reports. It is
written to a staging folder and renamed into place, so a failed export leaves no half folder. Without network
(or with ``HF_HUB_OFFLINE=1``) the upload fails with a message saying so, and the folder stays ready to upload.
A ``training.index_items`` folder exports like the trained folder it came from, its card listing the domains it
added; a LoRA folder gets its own card, naming its base by Hub name (``--base_model_id``) or relative path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from huggingface_hub import HfApi

from model_cards.generate import build_lora_card, write_model_card
from training.checkpoint import (
    HUB_RUN_FILES,
    OPTIONAL_RUN_FILES,
    load_checkpoint,
    write_hub_folder,
    write_json_atomically,
    write_text_atomically,
)


def export_folder(
    checkpoint: str | Path, output_dir: str | Path, model_id: str | None = None, base_model_id: str | None = None
) -> Path:
    """Write the Hub-ready folder for ``checkpoint`` at ``output_dir`` (replacing it as a whole); returns it. A LoRA
    folder gets the LoRA card; ``base_model_id`` (its base's Hub name) then replaces the local base path in
    ``adapter_config.json``, so the Hub copy loads its base from the Hub."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "adapter_config.json").is_file():
        model, tokenizer = load_checkpoint(checkpoint)

        def finish(staging: Path) -> None:
            if base_model_id:
                config = json.loads((staging / "adapter_config.json").read_text())
                write_json_atomically(
                    staging / "adapter_config.json", {**config, "base_model_name_or_path": base_model_id}
                )
            # Without a Hub name, the card names the base relative to the staging folder, a sibling of output_dir.
            card = build_lora_card(staging, model_id, base_model_id, name=Path(output_dir).name)
            write_text_atomically(staging / "README.md", str(card))

        return write_hub_folder(model, tokenizer, output_dir, run_dir=checkpoint, finish=finish)
    missing = [name for name in HUB_RUN_FILES if name not in OPTIONAL_RUN_FILES and not (checkpoint / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{checkpoint}: {', '.join(missing)} missing; export a folder written by python -m training.main"
        )
    model, tokenizer = load_checkpoint(checkpoint)
    return write_hub_folder(
        model, tokenizer, output_dir, run_dir=checkpoint, finish=lambda staging: write_model_card(staging, model_id)
    )


def push_folder(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create the model repo if needed and upload the folder; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return str(
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload RecBase model"
        )
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a folder written by python -m training.main, training.index_items, training.adapt or a LoRA run",
    )
    parser.add_argument(
        "--base_model_id", default=None, help="a LoRA folder's base model by its Hub name (default: a relative path)"
    )
    parser.add_argument(
        "--output_dir", default=None, help="default: outputs/hub/<NAME of --push_to_hub, or checkpoint name>"
    )
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", default=None)
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    name = args.push_to_hub.split("/")[-1] if args.push_to_hub else Path(args.checkpoint).resolve().name
    folder = export_folder(
        args.checkpoint, args.output_dir or Path("outputs/hub") / name, args.push_to_hub, args.base_model_id
    )
    print(f"Hub-ready folder: {folder}")
    if args.push_to_hub:
        try:
            url = push_folder(folder, args.push_to_hub, args.token, args.private)
        except Exception as error:  # offline mode, no network, bad token: all leave the folder as it is
            sys.exit(
                f"could not upload to {args.push_to_hub} ({type(error).__name__}: {error}). The folder {folder} is "
                f"ready; upload it later with: hf upload {args.push_to_hub} {folder}"
            )
        print(f"uploaded: {url}")
    return folder


if __name__ == "__main__":
    main()
