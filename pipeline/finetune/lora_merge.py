"""A peft LoRA model's export as the plain HF model: every adapted weight merged, as
`merge_and_unload` would, one tensor at a time (`Objective.export_sources`), so the export needs
neither peft nor a merged copy of the whole model in memory.
"""

from __future__ import annotations

from functools import partial

import torch

from ..train.export import ExportSource


def plain_name(name: str) -> str:
    """A peft-wrapped parameter's name in the merged plain model (what `merge_and_unload` leaves)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


@torch.no_grad()
def merged_weight(layer: torch.nn.Module, base: torch.Tensor) -> torch.Tensor:
    """peft's merge of a LoRA layer's active adapters into its base weight (`LoraLayer.merge`), in
    fp32: the export is fp32, and in a bf16 run the parameters are bf16. peft's `get_delta_weight`
    upcasts only on CPU, so on a GPU it would round B @ A and the sum to bf16 (a small update to a
    large weight is lost); here the base is upcast and the delta computed as peft does
    (`Linear.get_delta_weight`: B @ A, transposed if fan_in_fan_out, x scaling) from fp32 copies."""
    from peft.utils.other import transpose

    weight = base.detach().to(torch.float32, copy=True)  # copy: never add into the parameter itself
    for adapter in layer.active_adapters:
        a, b = layer.lora_A[adapter].weight.float(), layer.lora_B[adapter].weight.float()
        weight += transpose(b @ a, layer.fan_in_fan_out) * layer.scaling[adapter]
    return weight


def lora_export_sources(module: torch.nn.Module) -> dict[str, ExportSource]:
    """The trained parameters of a peft LoRA model under the plain model's names: each adapted weight
    merged on its own (base + B @ A x scaling) from the base weight and its two adapter matrices;
    a module peft trains in full (`modules_to_save`, e.g. a classifier head) is its trained copy.
    Tied weights appear once (`named_parameters` drops duplicates), as in the plain model's plan."""
    from peft.tuners.lora import LoraLayer

    sources: dict[str, ExportSource] = {}
    merged: set[int] = set()
    for path, layer in module.named_modules():
        if isinstance(layer, LoraLayer):
            base = layer.get_base_layer().weight
            adapters = [p for a in layer.active_adapters for p in (layer.lora_A[a].weight, layer.lora_B[a].weight)]
            merged.update(id(p) for p in (base, *adapters))
            sources[plain_name(f"{path}.weight")] = ExportSource([base, *adapters], partial(merged_weight, layer, base))
    for name, param in module.named_parameters():
        if id(param) not in merged and ".original_module." not in name and "lora_" not in name:
            sources[plain_name(name)] = ExportSource([param], lambda param=param: param)
    return sources
