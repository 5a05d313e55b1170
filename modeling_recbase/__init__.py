"""RecBase model package.

Importing it registers RecBase with the transformers Auto classes, so an installed user loads checkpoints
with ``AutoModelForCausalLM.from_pretrained(path)`` and needs no ``trust_remote_code``; it also registers
the ``next-item-generation`` pipeline task.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_recbase import PRESETS, RecBaseConfig
from .generation_recbase import RecBaseItemConstraint, constrained_beam_search
from .modeling_recbase import RecBaseForCausalLM, RecBaseModel, RecBasePreTrainedModel
from .pipeline_recbase import NextItemGenerationPipeline  # registers the pipeline task
from .ranking_recbase import RANKING_CONFIG_NAME, ItemRanker, RankingPolicy

AutoConfig.register(RecBaseConfig.model_type, RecBaseConfig, exist_ok=True)
AutoModel.register(RecBaseConfig, RecBaseModel, exist_ok=True)
AutoModelForCausalLM.register(RecBaseConfig, RecBaseForCausalLM, exist_ok=True)

__all__ = [
    "PRESETS",
    "RANKING_CONFIG_NAME",
    "ItemRanker",
    "NextItemGenerationPipeline",
    "RankingPolicy",
    "RecBaseConfig",
    "RecBaseForCausalLM",
    "RecBaseItemConstraint",
    "RecBaseModel",
    "RecBasePreTrainedModel",
    "constrained_beam_search",
]
