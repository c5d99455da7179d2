"""The quantization task (runs on a Ray worker, the model in its process): for each method, the
source export quantized on load (transformers' `TorchAoConfig`), saved with `save_pretrained`
(safetensors; torchao's tensor subclasses flattened with their metadata), reloaded the way users
load it (`from_pretrained(folder)`), measured against the original, and uploaded as the export of
run `<source run>-<method>`: weights, tokenizer and remote code, `sora_export.json` (lineage: source
export and method), `config.json` last (its presence marks the checkpoint complete), then
`quantize.json`. A checkpoint being redone is deleted first (stale record, `config.json`, then every
other file). Scratch space is the node cache directory (not the system temp dir, often small), and
each method's folder is deleted once uploaded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ..config.quantize import QuantizeConfig
from ..evaluation.harness import eval_dtype
from ..evaluation.stage import fetch_checkpoint
from ..keys import RunKeys
from ..records.export import FILE as EXPORT_INFO
from ..records.export import load_export
from ..storage import ObjectStore
from ..train.export import INDEX, clear_export
from ..train.loader import cache_directory
from .benchmark import (
    benchmark_prompt,
    device_name,
    generation_tokens_per_s,
    is_weight_file,
    prompt_logits,
    weight_bytes,
)
from .methods import PROJECTIONS, check_shapes, kept_linears, transformers_config
from .record import QuantizeRecord, group_size

PROMPT_SEED = 0
# What save_pretrained (and the lineage) write for the quantized model itself, besides its weight files;
# everything else of the source export (tokenizer files, remote code) is copied over unchanged.
MODEL_FILES = ("config.json", "generation_config.json", INDEX, EXPORT_INFO)


def quantize_export(
    store: ObjectStore, source_run: str, methods: list[str], settings: QuantizeConfig, device: str
) -> dict[str, QuantizeRecord]:
    """Quantize `source_run`'s export with each of `methods` on `device`; returns {method: record}."""
    import torch
    from transformers import AutoModelForCausalLM

    import sora  # noqa: F401  (registers model_type sora with the Auto classes)

    export_key, info, _ = load_export(store, source_run)
    source_uri = store.uri(export_key)
    dtype = getattr(torch, eval_dtype(device))
    records: dict[str, QuantizeRecord] = {}
    scratch = cache_directory() / "quantize"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{source_run}-", dir=scratch) as tmp:
        source = fetch_checkpoint(store, source_uri, Path(tmp) / "source")
        original = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device).eval()
        for method in methods:  # shapes checked before the first method's work
            check_shapes(original, method, settings.int4_group_size)
        prompt = benchmark_prompt(original.config.vocab_size, settings.prompt_tokens, PROMPT_SEED, device)
        speed_before = generation_tokens_per_s(original, prompt, settings.new_tokens, settings.repeats)
        logits_before = prompt_logits(original, prompt)
        kept = kept_linears(original)
        del original  # one model in memory at a time
        _free(device)
        for method in methods:
            started = time.monotonic()
            name = settings.run_name(source_run, method)
            folder = Path(tmp) / method
            quant_config = transformers_config(method, settings.int4_group_size, kept)
            quantized = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, device_map=device, quantization_config=quant_config
            )
            quantized.save_pretrained(folder)
            del quantized
            _copy_non_weights(source, folder)
            lineage = info.model_copy(
                update={
                    "run": name,
                    "init_from": source_uri,
                    "quantization": {"method": method, "source_run": source_run, **quant_config.to_dict()},
                }
            )
            lineage.write_local(folder)
            reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device).eval()
            record = QuantizeRecord(
                method=method,
                source_run=source_run,
                source_uri=source_uri,
                checkpoint_uri=store.uri(RunKeys(name).export),
                torchao_version=_torchao_version(),
                quantization=quant_config.to_dict(),
                quantized_modules=_quantized_modules(reloaded),
                device=device,
                device_name=device_name(device),
                dtype=str(dtype).removeprefix("torch."),
                weight_bytes_before=weight_bytes(source),
                weight_bytes_after=weight_bytes(folder),
                tokens_per_s_before=speed_before,
                tokens_per_s_after=generation_tokens_per_s(reloaded, prompt, settings.new_tokens, settings.repeats),
                prompt_tokens=settings.prompt_tokens,
                new_tokens=settings.new_tokens,
                repeats=settings.repeats,
                logits_max_abs_diff=float((prompt_logits(reloaded, prompt) - logits_before).abs().max()),
                seconds=0.0,
                source_step=info.step,
                source_val_loss=info.val_loss,
                int4_group_size=group_size(method, settings.int4_group_size),
            )
            del reloaded
            _free(device)
            _upload(store, name, folder)
            shutil.rmtree(folder)  # the next method's folder needs the space, not this one
            record.seconds = round(time.monotonic() - started, 3)
            record.write(store, name)
            records[method] = record
    return records


def _copy_non_weights(source: Path, folder: Path) -> None:
    """Every file of the source export but its weights and model configs: the tokenizer, and the
    Sora modeling code (`modeling_sora.py` ...) that config.json's `auto_map` points at."""
    for path in source.iterdir():
        if path.is_file() and path.name not in MODEL_FILES and not is_weight_file(path.name):
            shutil.copy2(path, folder / path.name)


def _upload(store: ObjectStore, run: str, folder: Path) -> None:
    """Upload the checkpoint folder to `runs/<run>/hf/`: the stale record and any earlier checkpoint
    deleted first (its `config.json` first, then every file, so no old shard or index outlives it),
    the new `config.json` uploaded last (the completeness marker, as for exports)."""
    prefix = RunKeys(run).export
    QuantizeRecord.delete(store, run)
    clear_export(store, prefix)
    for path in sorted(folder.iterdir(), key=lambda p: (p.name == "config.json", p.name)):
        store.upload_file(f"{prefix}/{path.name}", path)


def _free(device: str) -> None:
    """Give a deleted model's GPU memory back before the next one loads."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _quantized_modules(model) -> int:
    """Projections whose weight is a torchao quantized tensor after reloading."""
    from torchao.utils import TorchAOBaseTensor

    return sum(
        1
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in PROJECTIONS and isinstance(module.weight, TorchAOBaseTensor)
    )


def _torchao_version() -> str:
    from importlib.metadata import version

    return version("torchao")
