"""Sora: a decoder-only Transformer language model library (pure PyTorch + transformers).

Importing `sora` registers the model with the transformers Auto classes, so an exported Sora
checkpoint loads with `AutoModelForCausalLM.from_pretrained(path)`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_sora import NORM_CHOICES, PRESETS, SoraConfig
from .flops import count_parameters, flops_per_token, peak_flops
from .modeling_sora import (
    SoraForCausalLM,
    SoraForSequenceClassification,
    SoraModel,
    SoraPreTrainedModel,
    causal_lm_loss,
)

__version__ = "0.1.0"

AutoConfig.register("sora", SoraConfig, exist_ok=True)
AutoModel.register(SoraConfig, SoraModel, exist_ok=True)
AutoModelForCausalLM.register(SoraConfig, SoraForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SoraConfig, SoraForSequenceClassification, exist_ok=True)

__all__ = [
    "NORM_CHOICES",
    "PRESETS",
    "SoraConfig",
    "SoraModel",
    "SoraPreTrainedModel",
    "SoraForCausalLM",
    "SoraForSequenceClassification",
    "causal_lm_loss",
    "count_parameters",
    "flops_per_token",
    "peak_flops",
    "__version__",
]
