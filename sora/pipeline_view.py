"""The model as an ordered list of layers, for pipeline parallelism, and weight conversion.

`pipeline_layer_specs(config)` describes the stages' building blocks in order: embedding, the L
blocks, the final norm and the output head. Each entry names a class and its arguments; when the
head is tied to the embedding, both entries carry the same `tie_key` and the head uses
`head_forward` on the shared module. `pipeline/train` turns these into DeepSpeed `LayerSpec` /
`TiedLayerSpec` objects (keeping DeepSpeed out of the model library), and `materialize` builds
them as plain modules, which is how tests check the view against the flat model.

Pipeline layout state-dict keys are `"<layer index>.<param>"`, as `nn.Sequential` (and DeepSpeed's
per-layer checkpoint files) name them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .configuration_sora import SoraConfig
from .init import init_sora_weights
from .layers import SoraBlock, rotary_cos_sin
from .norms import build_norm


def init_module_tree(module: nn.Module, config: SoraConfig) -> None:
    """Initialize a pipeline layer with the flat model's rules (`sora.init`), not PyTorch defaults."""
    # Children first, then parents (as `nn.Module.apply` and transformers do): ADN zeroes its
    # `up` maps after its child Linear layers got their generic init.
    with torch.no_grad():
        module.apply(lambda child: init_sora_weights(child, config))


class EmbeddingPipe(nn.Module):
    """Token embedding; as the tied head it projects hidden states back onto the vocabulary."""

    def __init__(self, config: SoraConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.empty(config.vocab_size, config.hidden_size).normal_(std=config.initializer_range)
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, self.weight)


def head_forward(module: EmbeddingPipe, hidden: torch.Tensor) -> torch.Tensor:
    """Output projection through a (tied) embedding module: logits = hidden @ W^T."""
    return nn.functional.linear(hidden, module.weight)


class BlockPipe(SoraBlock):
    """A Sora block whose forward takes only hidden states (no padding, no cache in pretraining)."""

    def __init__(self, config: SoraConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        init_module_tree(self, config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None].expand(hidden.shape[0], -1)
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_theta, hidden.dtype)
        return super().forward(hidden, cos, sin)


class NormPipe(nn.Module):
    """The final norm as a stand-alone layer."""

    def __init__(self, config: SoraConfig) -> None:
        super().__init__()
        self.norm = build_norm(config.norm, config.hidden_size, config.norm_eps, config.adn_rank)
        init_module_tree(self, config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden)


class HeadPipe(nn.Module):
    """Untied output head."""

    def __init__(self, config: SoraConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.empty(config.vocab_size, config.hidden_size).normal_(std=config.initializer_range)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight)


@dataclass
class PipeLayer:
    """One pipeline layer: `cls(*args)`, optionally tied to other layers with the same `tie_key`."""

    cls: type[nn.Module]
    args: tuple[Any, ...]
    tie_key: str | None = None
    forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    tied_weight_attr: list[str] = field(default_factory=lambda: ["weight"])


def pipeline_layer_specs(config: SoraConfig) -> list[PipeLayer]:
    """Ordered layers: [embedding, block_0 .. block_{L-1}, final norm, head]."""
    tie = "embed" if config.tie_word_embeddings else None
    layers = [PipeLayer(EmbeddingPipe, (config,), tie_key=tie)]
    layers += [PipeLayer(BlockPipe, (config, i)) for i in range(config.num_hidden_layers)]
    layers.append(PipeLayer(NormPipe, (config,)))
    if tie:
        layers.append(PipeLayer(EmbeddingPipe, (config,), tie_key=tie, forward_fn=head_forward))
    else:
        layers.append(PipeLayer(HeadPipe, (config,)))
    return layers


def materialize(specs: list[PipeLayer]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Build the layers as plain modules (tied layers share one module); returns callables in order."""
    tied: dict[str, nn.Module] = {}
    callables: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for spec in specs:
        if spec.tie_key is not None and spec.tie_key in tied:
            module = tied[spec.tie_key]
        else:
            module = spec.cls(*spec.args)
            if spec.tie_key is not None:
                tied[spec.tie_key] = module
        if spec.forward_fn is not None:
            callables.append(_bind(spec.forward_fn, module))
        else:
            callables.append(module)
    return callables


def _bind(fn: Callable, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x: torch.Tensor) -> torch.Tensor:
        return fn(module, x)

    call.module = module  # type: ignore[attr-defined]
    return call


def run_sequential(layers: list[Callable[[torch.Tensor], torch.Tensor]], input_ids: torch.Tensor) -> torch.Tensor:
    """Run materialized layers one after another, as a pipeline would across stages."""
    x = input_ids
    for layer in layers:
        x = layer(x)
    return x


def flat_to_pipeline_state_dict(flat: dict[str, torch.Tensor], config: SoraConfig) -> dict[str, torch.Tensor]:
    """Convert `SoraForCausalLM` keys (`model.layers.3.attn.q_proj.weight`) to pipeline keys."""
    num_layers = config.num_hidden_layers
    norm_index, head_index = num_layers + 1, num_layers + 2
    out: dict[str, torch.Tensor] = {}
    for key, value in flat.items():
        if key == "model.embed_tokens.weight":
            out["0.weight"] = value
        elif key.startswith("model.layers."):
            index, rest = key[len("model.layers.") :].split(".", 1)
            out[f"{int(index) + 1}.{rest}"] = value
        elif key.startswith("model.norm."):
            out[f"{norm_index}.norm.{key[len('model.norm.') :]}"] = value
        elif key == "lm_head.weight":
            if not config.tie_word_embeddings:
                out[f"{head_index}.weight"] = value
        else:
            raise KeyError(f"unexpected key in a SoraForCausalLM state dict: {key}")
    if config.tie_word_embeddings:
        out[f"{head_index}.weight"] = out["0.weight"]
    return out


def pipeline_key_to_flat(key: str, config: SoraConfig) -> str:
    """The `SoraForCausalLM` name of one pipeline-layout key (`3.attn.q_proj.weight` ->
    `model.layers.2.attn.q_proj.weight`)."""
    num_layers = config.num_hidden_layers
    index_text, rest = key.split(".", 1)
    index = int(index_text)
    if index == 0:
        return "model.embed_tokens.weight"
    if 1 <= index <= num_layers:
        return f"model.layers.{index - 1}.{rest}"
    if index == num_layers + 1:
        return f"model.norm.{rest[len('norm.') :]}"
    if index == num_layers + 2:
        return "lm_head.weight"
    raise KeyError(f"unexpected key in a pipeline state dict: {key}")


def pipeline_to_flat_state_dict(pipe: dict[str, torch.Tensor], config: SoraConfig) -> dict[str, torch.Tensor]:
    """Inverse of `flat_to_pipeline_state_dict`."""
    out = {pipeline_key_to_flat(key, config): value for key, value in pipe.items()}
    if config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def load_pipeline_weights(layers: list[Callable], pipe_state: dict[str, torch.Tensor]) -> None:
    """Copy a pipeline-layout state dict into materialized layers (strict)."""
    for index, layer in enumerate(layers):
        module = getattr(layer, "module", layer)
        prefix = f"{index}."
        own = {k[len(prefix) :]: v for k, v in pipe_state.items() if k.startswith(prefix)}
        module.load_state_dict(own, strict=True)


def pipeline_state_dict(layers: list[Callable]) -> dict[str, torch.Tensor]:
    """State dict of materialized layers in pipeline layout."""
    out: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        module = getattr(layer, "module", layer)
        out.update({f"{index}.{k}": v for k, v in module.state_dict().items()})
    return out
