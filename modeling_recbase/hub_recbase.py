"""What makes a saved RecBase folder load and run from the Hub: the Auto classes in ``auto_map``, the pipeline task
in ``custom_pipelines``, and the pipeline's code shipped beside the model's.

Shipped beside the weights: imports only transformers, the standard library and same-folder files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging

logger = logging.get_logger(__name__)

TASK = "next-item-generation"
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


__all__ = ["AUTO_MAP", "PIPELINE_CLASS", "PIPELINE_FILE", "TASK", "hub_entry_points", "ship_pipeline_code"]
