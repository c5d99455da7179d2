"""`runs/<run>-<method>/quantize.json`: what one quantization did and measured.

Written after the quantized checkpoint is uploaded (its `config.json` last), so a record means a
complete checkpoint; `sora quantize` skips a method whose record exists.
"""

from __future__ import annotations

from typing import Any

from ..keys import RunKeys
from ..records.base import Record
from ..storage import ObjectStore

FILE = "quantize.json"


class QuantizeRecord(Record):
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

    @property
    def size_ratio(self) -> float:
        return self.weight_bytes_after / self.weight_bytes_before

    @property
    def speed_ratio(self) -> float:
        return self.tokens_per_s_after / self.tokens_per_s_before

    @staticmethod
    def key(run: str) -> str:
        return f"{RunKeys(run).prefix}/{FILE}"

    @classmethod
    def load(cls, store: ObjectStore, run: str) -> QuantizeRecord | None:
        try:
            return cls.from_bytes(store.read(cls.key(run)))
        except FileNotFoundError:
            return None

    def write(self, store: ObjectStore, run: str) -> None:
        store.write(self.key(run), self.to_bytes())
