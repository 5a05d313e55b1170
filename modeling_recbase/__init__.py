"""RecBase model package.

Importing it registers RecBase with the transformers Auto classes, so an installed user loads checkpoints
with ``AutoModelForCausalLM.from_pretrained(path)`` and needs no ``trust_remote_code``; it also registers
the ``next-item-generation`` pipeline task.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_recbase import PRESETS, RecBaseConfig
from .modeling_recbase import RecBaseForCausalLM, RecBaseItemConstraint, RecBaseModel, RecBasePreTrainedModel
from .pipeline_recbase import NextItemGenerationPipeline, rank_items, score_candidates  # registers the pipeline task

AutoConfig.register(RecBaseConfig.model_type, RecBaseConfig, exist_ok=True)
AutoModel.register(RecBaseConfig, RecBaseModel, exist_ok=True)
AutoModelForCausalLM.register(RecBaseConfig, RecBaseForCausalLM, exist_ok=True)

__all__ = [
    "NextItemGenerationPipeline",
    "PRESETS",
    "RecBaseConfig",
    "RecBaseForCausalLM",
    "RecBaseItemConstraint",
    "RecBaseModel",
    "RecBasePreTrainedModel",
    "rank_items",
    "score_candidates",
]
