"""Export a consolidated Hugging Face checkpoint (safetensors + tokenizer + config) to `runs/<run>/hf/`,
streamed: no process holds the whole model's weights, nor a model object to save them from.

The files are what `save_pretrained` writes, byte for byte (tests/pipeline/train/test_export.py):
`model.safetensors`, or `model-0000x-of-0000N.safetensors` + `model.safetensors.index.json` past
EXPORT_SHARD_SIZE; tied weights stored once; the dtype of the exported model (fp32), plus
`config.json` and `generation_config.json`. The plan (`export_plan`) comes from the exported model's
skeleton: the objective's HF class built on the meta device (names, shapes, dtype and config, no
weights), laid out with transformers' own rules (tied weights dropped, then
`split_torch_state_dict_into_shards`), so every rank knows every tensor's file and byte offset
before any weight moves.

`HFExport` is global rank 0's side: it takes the tensors one at a time in any order (engine.py
`Engine.export_weights` gathers or receives them), writes each at its offset into a local shard
file whose header went first, and uploads a file as soon as its last tensor is in, then deletes it.
Memory: one tensor; local disk: the shard files being filled (one at a time, plus any tensor
larger than a shard, which `save_pretrained` also puts alone in a file). Then the dataset's
tokenizer, the lineage (`Objective.export_info`) and `config.json` last: its presence marks the
export complete, so an earlier export is deleted (its `config.json` first, then every other file:
`clear_export`) before the first shard goes up.
A run's exports (export_formats.py) are this one with the Sora modeling code attached
(`finish(remote_code=True)`, export_remote_code.py) and a second `HFExport` of the Llama
equivalent into `runs/<run>/hf-llama/` (export_llama.py).
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..data.tokenizer_step import load_stored_tokenizer
from ..keys import RunKeys
from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from .export_remote_code import attach_remote_code

EXPORT_SHARD_SIZE = "2GB"
WEIGHTS = "model{suffix}.safetensors"  # transformers' SAFE_WEIGHTS_NAME with its shard suffix slot
INDEX = "model.safetensors.index.json"

# safetensors' dtype names, in the order of its `Dtype` enum: a file stores its tensors sorted by
# dtype (that order, descending), then by name, which is how these files match its own byte for byte.
_DTYPES = [
    (torch.bool, "BOOL"),
    (torch.uint8, "U8"),
    (torch.int8, "I8"),
    (torch.float8_e5m2, "F8_E5M2"),
    (torch.float8_e4m3fn, "F8_E4M3"),
    (torch.int16, "I16"),
    (torch.uint16, "U16"),
    (torch.float16, "F16"),
    (torch.bfloat16, "BF16"),
    (torch.int32, "I32"),
    (torch.uint32, "U32"),
    (torch.float32, "F32"),
    (torch.complex64, "C64"),
    (torch.float64, "F64"),
    (torch.int64, "I64"),
    (torch.uint64, "U64"),
]
_DTYPE_NAME = {dtype: name for dtype, name in _DTYPES}
_DTYPE_RANK = {dtype: rank for rank, (dtype, _) in enumerate(_DTYPES)}


@dataclass(frozen=True)
class ExportSource:
    """Where one exported tensor comes from: the engine parameters it is computed from (gathered
    together under ZeRO-3) and `value()`, called while they are gathered (the parameter itself, or
    e.g. a LoRA-merged weight)."""

    params: list[torch.nn.Parameter]
    value: Callable[[], torch.Tensor]


def parameter_sources(module: torch.nn.Module) -> dict[str, ExportSource]:
    """Every parameter of `module` exported as itself, under its own name."""
    return {name: ExportSource([param], lambda param=param: param) for name, param in module.named_parameters()}


@dataclass(frozen=True)
class Entry:
    """One tensor of the export: its file, shape, dtype and byte range in the file's data."""

    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    begin: int
    end: int


@dataclass
class ExportPlan:
    """Every exported tensor (in the exported model's state-dict order) and every file's header."""

    entries: dict[str, Entry]
    headers: dict[str, bytes]  # file name -> the bytes before its data (length prefix + JSON header)
    index: dict | None  # model.safetensors.index.json, when sharded
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> total bytes

    @property
    def names(self) -> list[str]:
        return list(self.entries)


def export_plan(model: PreTrainedModel, max_shard_size: int | str = EXPORT_SHARD_SIZE) -> ExportPlan:
    """The layout `model.save_pretrained(max_shard_size=...)` writes, from names and shapes alone
    (`model` may live on the meta device)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = model.state_dict()
    for ignored in model._keys_to_ignore_on_save or ():
        state.pop(ignored, None)
    state = remove_tied_weights_from_state_dict(state, model)
    split = split_torch_state_dict_into_shards(state, filename_pattern=WEIGHTS, max_shard_size=max_shard_size)
    entries: dict[str, Entry] = {}
    headers, sizes = {}, {}
    for file, names in split.filename_to_tensors.items():
        ordered = sorted(names, key=lambda n: (-_DTYPE_RANK[state[n].dtype], n))
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in ordered:
            tensor = state[name]
            size = tensor.numel() * tensor.element_size()
            entries[name] = Entry(file, tuple(tensor.shape), tensor.dtype, offset, offset + size)
            shape = list(tensor.shape)
            header[name] = {"dtype": _DTYPE_NAME[tensor.dtype], "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
        headers[file] = struct.pack("<Q", len(text)) + text
        sizes[file] = len(headers[file]) + offset
    index = None
    if split.is_sharded:
        metadata = {"total_parameters": model.num_parameters(), **split.metadata}
        index = {"metadata": metadata, "weight_map": split.tensor_to_filename}
    return ExportPlan({name: entries[name] for name in state}, headers, index, sizes)


class HFExport:
    """Global rank 0's streamed export into `runs/<run>/hf/` (see the module docstring)."""

    def __init__(
        self, store: ObjectStore, run: str, plan: ExportPlan, scratch: Path, prefix: str | None = None
    ) -> None:
        """`prefix`: the export's folder in the store (default `runs/<run>/hf`)."""
        self.store, self.plan, self.prefix = store, plan, prefix or RunKeys(run).export
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.open: dict[str, IO[bytes]] = {}
        self.left = {file: 0 for file in plan.headers}
        for entry in plan.entries.values():
            self.left[entry.file] += 1
        self.written: set[str] = set()
        clear_export(store, self.prefix)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor (any device or dtype: stored as the plan's); uploads its file when complete."""
        entry = self.plan.entries.get(name)
        if entry is None or name in self.written:
            raise RuntimeError(f"export: tensor {name!r} is {'written twice' if entry else 'not in the export'}")
        if tuple(tensor.shape) != entry.shape:
            raise RuntimeError(f"export: tensor {name!r} has shape {tuple(tensor.shape)}, the model {entry.shape}")
        data = tensor.detach().to("cpu", entry.dtype).contiguous()
        handle = self.open.get(entry.file)
        if handle is None:
            handle = self.open[entry.file] = open(self.scratch / entry.file, "wb+")  # noqa: SIM115
            handle.write(self.plan.headers[entry.file])
        handle.seek(len(self.plan.headers[entry.file]) + entry.begin)
        handle.write(data.reshape(-1).view(torch.uint8).numpy().data)
        self.written.add(name)
        self.left[entry.file] -= 1
        if self.left[entry.file] == 0:
            self._upload(entry.file)

    def _upload(self, file: str) -> None:
        handle = self.open.pop(file)
        handle.truncate(self.plan.sizes[file])
        handle.close()
        path = self.scratch / file
        self.store.upload_file(f"{self.prefix}/{file}", path)
        path.unlink()

    def finish(
        self, skeleton: PreTrainedModel, manifest: DatasetVersion, info: ExportInfo, remote_code: bool = False
    ) -> str:
        """After every tensor: the index, tokenizer, lineage and configs (config.json last); returns the URI.
        `remote_code`: also the Sora modeling code and config.json's `auto_map` (export_remote_code.py),
        so the export loads with `trust_remote_code=True` where Sora is not installed."""
        missing = [name for name in self.plan.entries if name not in self.written]
        if missing:
            raise RuntimeError(f"export: {len(missing)} tensors never written, e.g. {missing[:3]}")
        block = manifest.tokenizer
        tokenizer = hf_tokenizer(load_stored_tokenizer(self.store, block), block.eos_id, block.pad_id)
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            folder = Path(tmp)
            if self.plan.index is not None:
                (folder / INDEX).write_text(json.dumps(self.plan.index, indent=2, sort_keys=True) + "\n")
            tokenizer.save_pretrained(folder)
            info.write_local(folder)
            if remote_code:
                attach_remote_code(skeleton.config, folder)
            save_configs(skeleton, folder)
            for path in sorted(folder.iterdir(), key=lambda p: (p.name == "config.json", p.name)):
                self.store.upload_file(f"{self.prefix}/{path.name}", path)
        return self.store.uri(self.prefix)


def clear_export(store: ObjectStore, prefix: str) -> None:
    """Delete an earlier export under `prefix`: `config.json` first (it is no longer complete), then
    every other file, so none outlives the new export (a single-file `model.safetensors` left beside
    a new sharded index is what transformers would load; old shards or code would look current)."""
    if store.exists(f"{prefix}/config.json"):
        store.delete(f"{prefix}/config.json")
    store.delete_prefix(prefix)


def save_configs(model: PreTrainedModel, folder: Path) -> None:
    """config.json and generation_config.json, as `save_pretrained` writes them."""
    model.config.dtype = str(model.dtype).split(".")[1]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)


def hf_tokenizer(tokenizer: Tokenizer, eos_id: int, pad_id: int) -> PreTrainedTokenizerFast:
    eos, pad = tokenizer.id_to_token(eos_id), tokenizer.id_to_token(pad_id)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, bos_token=eos, pad_token=pad)


def upload_hf_model(
    store: ObjectStore, run: str, model: PreTrainedModel, manifest: DatasetVersion, info: ExportInfo
) -> str:
    """Export a model held in memory (one process) to `runs/<run>/hf/`; returns its URI."""
    plan = export_plan(model)
    state = model.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        export = HFExport(store, run, plan, Path(tmp))
        for name in plan.names:
            export.write(name, state[name])
        return export.finish(model, manifest, info)
