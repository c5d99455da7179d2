"""Weight initialization of every Sora module, one rule set for the flat and the pipeline layout.

Module-local on purpose: each call touches only `module`'s own parameters, which is what
transformers' `_init_weights` hook expects and what lets ZeRO-3 construction (parameters
partitioned at build time under `deepspeed.zero.Init`) gather one module at a time to init it.
The `transformers.initialization` functions skip parameters already loaded from a checkpoint.
"""

from __future__ import annotations

import math

from torch import nn
from transformers import initialization as init

from .configuration_sora import SoraConfig
from .norms import AdaptiveDynamicNorm, LayerNorm, RMSNorm


def mark_residual_output(linear: nn.Linear) -> None:
    """Mark a projection that writes into the residual stream (scaled-down init, GPT-2 style)."""
    linear._sora_residual_out = True


def init_sora_weights(module: nn.Module, config: SoraConfig) -> None:
    """Initialize `module`'s own parameters (not its children's)."""
    std = config.initializer_range
    if isinstance(module, nn.Linear):
        # Residual-stream writers are scaled by 1/sqrt(2L) so the residual variance does not grow
        # with depth.
        residual = getattr(module, "_sora_residual_out", False)
        init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * config.num_hidden_layers) if residual else std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, (LayerNorm, RMSNorm, AdaptiveDynamicNorm)):
        init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            init.zeros_(module.bias)
        if isinstance(module, AdaptiveDynamicNorm):
            # U = up @ down starts at zero (ADN == RMSNorm + bias) yet `up` gets gradients at once.
            init.normal_(module.gain_down.weight, mean=0.0, std=std)
            init.normal_(module.shift_down.weight, mean=0.0, std=std)
            init.zeros_(module.gain_up.weight)
            init.zeros_(module.shift_up.weight)
