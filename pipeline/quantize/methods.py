"""The quantization methods: which torchao config each name means, where it can run, which layers.

    int8   `Int8WeightOnlyConfig`: one int8 per weight, one scale per output row. Runs (and its
           checkpoint loads) on CPU and CUDA, in the dtype the model is scored in there.
    int4   `Int4WeightOnlyConfig` in torchao's tinygemm layout (`tile_packed_to_4d`): two weights
           per byte, a bfloat16 scale and zero point per `int4_group_size` inputs. CUDA with
           bfloat16 only: torchao 0.18's other int4 layouts need the `mslk` kernels (plain) or
           XPU/NPU (plain_int32), and its CPU layout (`Int4OpaqueTensor`) cannot be saved as
           safetensors, the only format transformers 5 writes.

Only the Transformer blocks' linear projections are quantized (`PROJECTIONS`): the embedding and
the LM head tied to it stay in full precision (quantizing a tied head would untie it and store the
matrix twice), and so do ADN's small low-rank norm projections (rank 8-64: their input width is
below int4's group size and they hold a negligible share of the weights).
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The tinygemm int4 kernel packs 8 output rows per tile.
INT4_ROW_MULTIPLE = 8


def device_problem(method: str, device: str, bf16: bool) -> str | None:
    """Why `method` cannot run on `device` (cpu, cuda; `bf16`: the GPU supports bfloat16), or None."""
    if method == "int4" and device != "cuda":
        return (
            "quantize.methods: int4 needs a CUDA GPU (torchao's CPU int4 layout cannot be saved as safetensors); "
            "use int8 on CPU, or set quantize.device to cuda on a cluster with GPUs"
        )
    if method == "int4" and not bf16:
        return "quantize.methods: int4 needs a GPU with bfloat16 (torchao's tinygemm int4 kernel); use int8"
    return None


def check_methods(methods: list[str], device: str, bf16: bool) -> None:
    """UserError for the first method the device cannot do (before any work)."""
    for method in methods:
        problem = device_problem(method, device, bf16)
        if problem is not None:
            raise UserError(problem)


def torchao_config(method: str, int4_group_size: int):
    """The torchao `AOBaseConfig` of `method`."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if method == "int8":
        return Int8WeightOnlyConfig()
    if method == "int4":
        return Int4WeightOnlyConfig(group_size=int4_group_size, int4_packing_format="tile_packed_to_4d")
    raise UserError(f"unknown quantization method {method!r}: use int8 or int4")


def kept_linears(model: Any) -> list[str]:
    """Names of the model's `nn.Linear` modules left in full precision (all but `PROJECTIONS`)."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in PROJECTIONS
    ]


def check_shapes(model: Any, method: str, int4_group_size: int) -> None:
    """UserError when a projection's shape does not fit `method` (int4: groups and kernel tiles)."""
    if method != "int4":
        return
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PROJECTIONS:
            rows, columns = module.weight.shape
            if columns % int4_group_size or rows % INT4_ROW_MULTIPLE:
                raise UserError(
                    f"int4: {name} has shape {rows}x{columns}; its input width must be a multiple of "
                    f"quantize.int4_group_size ({int4_group_size}) and its rows of {INT4_ROW_MULTIPLE}"
                )


def transformers_config(method: str, int4_group_size: int, kept: list[str]):
    """transformers' `TorchAoConfig` of `method`, the linear modules named in `kept` left unquantized
    (`kept_linears`: never empty, the LM head is one; an empty list would mean transformers' defaults)."""
    from transformers import TorchAoConfig

    return TorchAoConfig(torchao_config(method, int4_group_size), modules_to_not_convert=kept)
