"""`quantize_markdown`: the report's table of a run's quantized checkpoints, from stored files alone.

One row for the original export and one per method: weight bytes on disk (MB = 10^6 bytes) and their
ratio to the original, greedy-generation tokens/s on the device that quantized, and held-out bits/byte
from `sora evaluate` (`runs/<run>/eval/<name>/results.json`) when it has scored them.
"""

from __future__ import annotations

from ..config.quantize import METHODS
from ..records import EvalResults
from ..storage import ObjectStore
from .record import QuantizeRecord

HELDOUT_TASK = "sora_heldout_ppl"


def heldout_bits_per_byte(store: ObjectStore, run: str, name: str) -> float | None:
    """Held-out bits/byte of evaluation `name` of `run`, or None when it has not been evaluated."""
    results = EvalResults.load(store, run, name)
    metrics = results.results.get(HELDOUT_TASK, {}) if results is not None else {}
    return next((float(value) for key, value in metrics.items() if key.split(",")[0] == "bits_per_byte"), None)


def quantized_runs(store: ObjectStore, run: str) -> dict[str, str]:
    """{label: run name} of `run`'s quantized copies (the report's lineage table)."""
    return {f"quantized ({m})": f"{run}-{m}" for m in METHODS if QuantizeRecord.load(store, f"{run}-{m}") is not None}


def quantize_markdown(store: ObjectStore, run: str) -> str:
    """Markdown table of `run`'s quantized checkpoints ("" when it has none)."""
    records = {m: r for m in METHODS if (r := QuantizeRecord.load(store, f"{run}-{m}")) is not None}
    if not records:
        return ""
    first = next(iter(records.values()))
    lines = [
        f"Weight-only quantization (torchao {first.torchao_version}); generation: {first.new_tokens} new "
        f"tokens after {first.prompt_tokens}, greedy, median of {first.repeats}.",
        "",
        "| checkpoint | size (MB) | size ratio | tokens/s | device | held-out bits/byte |",
        "|---|---:|---:|---:|---|---:|",
        _row("original", first.weight_bytes_before, 1.0, first.tokens_per_s_before, first, store, run, "pretrained"),
    ]
    for method, record in records.items():
        ratio = record.size_ratio
        lines.append(_row(method, record.weight_bytes_after, ratio, record.tokens_per_s_after, record, store, run))
    return "\n".join(lines) + "\n"


def _row(
    label: str,
    size: int,
    ratio: float,
    speed: float,
    record: QuantizeRecord,
    store: ObjectStore,
    run: str,
    eval_name: str | None = None,
) -> str:
    bpb = heldout_bits_per_byte(store, run, eval_name or label)
    shown = "-" if bpb is None else f"{bpb:.4f}"
    device = f"{record.device_name} ({record.dtype})"
    return f"| {label} | {size / 1e6:.2f} | {ratio:.2f} | {speed:.1f} | {device} | {shown} |"
