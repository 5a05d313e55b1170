"""What makes a saved RecBase folder load and run from the Hub: the Auto classes in ``auto_map``, the pipeline task
in ``custom_pipelines``, the ranking policy beside the weights, and the pipeline's code shipped beside the model's.

Shipped beside the weights: imports only transformers, the standard library and same-folder files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging

from .ranking_recbase import RankingPolicy
from .saving_recbase import save_through_staging

logger = logging.get_logger(__name__)

TASK = "next-item-generation"
ADAPTER_CONFIG = "adapter_config.json"
PIPELINE_FILE = "pipeline_recbase.py"
PIPELINE_CLASS = "NextItemGenerationPipeline"
AUTO_MAP = {
    "AutoConfig": "configuration_recbase.RecBaseConfig",
    "AutoModel": "modeling_recbase.RecBaseModel",
    "AutoModelForCausalLM": "modeling_recbase.RecBaseForCausalLM",
}


def hub_entry_points(config) -> None:
    """List every Auto class in ``config.auto_map`` (``save_pretrained`` adds only the saving class's, so a folder
    saved from either class loads with both) and the pipeline task in ``config.custom_pipelines``."""
    config.auto_map = {**(getattr(config, "auto_map", None) or {}), **AUTO_MAP}
    config.custom_pipelines = {
        TASK: {"impl": f"{Path(PIPELINE_FILE).stem}.{PIPELINE_CLASS}", "pt": ["AutoModelForCausalLM"]}
    }


def ship_pipeline_code(save_directory: str | os.PathLike, loaded_from: str | os.PathLike | None = None) -> None:
    """Copy the pipeline's file and the same-folder files it imports into ``save_directory``, from beside this
    file (an installed package, or a module cache that holds them) or else from the folder the model was loaded
    from; warn when neither has them (the folder then loads as a model, but not as a pipeline)."""
    for folder in (Path(__file__).parent, Path(loaded_from) if loaded_from else None):
        source = folder / PIPELINE_FILE if folder is not None else None
        if source is not None and source.is_file():
            for path in [source, *get_relative_import_files(str(source))]:
                target = Path(save_directory) / Path(path).name
                if Path(path).resolve() != target.resolve():
                    shutil.copyfile(path, target)
            return
    logger.warning(f"{PIPELINE_FILE} was not found beside the model's code: {save_directory} has no pipeline code")


class RecBaseHubMixin:
    """``from_pretrained`` and ``save_pretrained`` of RecBase models: the ranking policy travels with the weights,
    and every saved folder is a pipeline folder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, with the folder's ranking policy, and an error that names a weights
        file it cannot read."""
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            # safetensors' own error says "incomplete metadata" and names no file (its class is matched by name:
            # shipped files import only torch and transformers).
            if type(error).__name__ != "SafetensorError":
                raise
            raise OSError(
                f"{pretrained_model_name_or_path}: a model.safetensors file there cannot be read ({error}); "
                "it is truncated or corrupt: copy or download it again"
            ) from error
        hub_kwargs = {name: kwargs[name] for name in ("cache_dir", "revision", "token") if name in kwargs}
        # A LoRA folder loaded by transformers' PEFT support: the Auto class hands over its base's path and names the
        # adapter's folder apart. Its own ranking policy (and, in the pipeline, its tokenizer) are the ones to use.
        adapter = (kwargs.get("adapter_kwargs") or {}).get("_adapter_model_path")
        if adapter is None and (Path(str(pretrained_model_name_or_path)) / ADAPTER_CONFIG).is_file():
            adapter = pretrained_model_name_or_path
        source = adapter if adapter is not None else pretrained_model_name_or_path
        model.ranking_policy = RankingPolicy.from_pretrained(source, model.config, **hub_kwargs)
        if adapter is not None:
            model.adapter_folder = str(adapter)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained``, plus the ranking policy and the pipeline's code: every folder a
        model is saved to (a merged LoRA's too) is a pipeline folder. Written through a staging folder, so a kill
        never leaves a file cut short (``saving_recbase``)."""
        if not kwargs.get("is_main_process", True):
            super().save_pretrained(save_directory, *args, **kwargs)
            return

        def write(staging: str) -> None:
            super(RecBaseHubMixin, self).save_pretrained(staging, *args, **kwargs)
            self.ranking_policy.save_pretrained(staging)
            ship_pipeline_code(staging, self.name_or_path or None)

        save_through_staging(save_directory, write)


__all__ = [
    "ADAPTER_CONFIG",
    "AUTO_MAP",
    "RecBaseHubMixin",
    "PIPELINE_CLASS",
    "PIPELINE_FILE",
    "TASK",
    "hub_entry_points",
    "ship_pipeline_code",
]
