"""`runs/<run>-<method>/quantize.json`: what one quantization did and measured.

Written after the quantized checkpoint is uploaded (its `config.json` last), so a record means a
complete checkpoint; `sora quantize` skips a method whose record names the current source export
(URI, step, validation loss) and method settings (`changes`), and redoes it otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..records.export import ExportInfo
from ..records.run import RunFile

FILE = "quantize.json"


class QuantizeRecord(RunFile):
    file: ClassVar[str] = FILE
    method: str
    source_run: str
    source_uri: str
    checkpoint_uri: str
    torchao_version: str
    quantization: dict[str, Any]  # transformers' TorchAoConfig.to_dict()
    quantized_modules: int  # linear projections stored quantized
    device: str  # cpu, cuda
    device_name: str
    dtype: str  # of the activations and unquantized weights, as measured
    weight_bytes_before: int
    weight_bytes_after: int
    tokens_per_s_before: float
    tokens_per_s_after: float
    prompt_tokens: int
    new_tokens: int
    repeats: int
    logits_max_abs_diff: float  # on the benchmark prompt, quantized (reloaded) vs original
    seconds: float  # quantize + save + reload + measure
    # The source export's identity (its sora_export.json) and the method's own settings when quantized:
    # a re-exported source or another group size makes the checkpoint stale. None in older records.
    source_step: int | None = None
    source_val_loss: float | None = None
    int4_group_size: int | None = None  # int4 only

    def changes(self, source_uri: str, source: ExportInfo, int4_group_size: int | None) -> list[str]:
        """`"name: recorded -> current"` for each identity field that differs (empty: still current)."""
        current = {
            "source_uri": source_uri,
            "source_step": source.step,
            "source_val_loss": source.val_loss,
            "int4_group_size": int4_group_size,
        }
        recorded = {name: getattr(self, name) for name in current}
        return [f"{name}: {recorded[name]!r} -> {new!r}" for name, new in current.items() if recorded[name] != new]

    @property
    def size_ratio(self) -> float:
        return self.weight_bytes_after / self.weight_bytes_before

    @property
    def speed_ratio(self) -> float:
        return self.tokens_per_s_after / self.tokens_per_s_before


def group_size(method: str, int4_group_size: int) -> int | None:
    """The method's own setting that shapes its checkpoint: int4's group size; int8 has none."""
    return int4_group_size if method == "int4" else None
