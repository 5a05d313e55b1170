"""RecBase model package.

Importing it registers RecBase with the transformers Auto classes, so an installed user loads checkpoints
with ``AutoModelForCausalLM.from_pretrained(path)`` and needs no ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_recbase import PRESETS, SPECIAL_TOKENS, RecBaseConfig
from .modeling_recbase import RecBaseForCausalLM, RecBaseItemConstraint, RecBaseModel, RecBasePreTrainedModel

AutoConfig.register(RecBaseConfig.model_type, RecBaseConfig, exist_ok=True)
AutoModel.register(RecBaseConfig, RecBaseModel, exist_ok=True)
AutoModelForCausalLM.register(RecBaseConfig, RecBaseForCausalLM, exist_ok=True)

__all__ = [
    "PRESETS",
    "SPECIAL_TOKENS",
    "RecBaseConfig",
    "RecBaseForCausalLM",
    "RecBaseItemConstraint",
    "RecBaseModel",
    "RecBasePreTrainedModel",
]
