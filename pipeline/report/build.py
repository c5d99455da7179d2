"""Build `runs/<run>/report.md` + `report.html` from what the stages stored, nothing else.

Sections, what the run learned first: the eval table (pretrained vs scratch vs chance, with
stderr), pretraining curves, fine-tuning curves, then data (manifest stats, the filter table),
lineage, wall time per stage, and the full config last (collapsed in the HTML). A stage that has
not run yet is reported as such, so the report is useful at any point of a run.
"""

from __future__ import annotations

import base64

import yaml
from markdown_it import MarkdownIt
from pydantic import ValidationError

from ..config.finetune import FinetuneConfig
from ..distill.report import distill_markdown, distill_runs
from ..keys import RunKeys
from ..quantize.report import quantize_markdown, quantized_runs
from ..records import RunPin, StoredConfig, read_dataset, read_rows
from ..storage import ObjectStore
from .curves import finetune_curves, pretrain_curves
from .tables import data_table, eval_markdown, filters_markdown, lineage_table, timing_table


def finetune_settings(stored: StoredConfig | None) -> FinetuneConfig:
    """The fine-tune section of the stored run config (defaults when none was stored)."""
    if stored is None:
        return FinetuneConfig()
    section = stored.section("finetune")
    try:
        return FinetuneConfig.model_validate(section)
    except ValidationError:  # written by another Sora version: the fields that name its runs suffice
        return FinetuneConfig.model_validate({k: v for k, v in section.items() if k in ("method", "from_run")})


def build_report(store: ObjectStore, run: str) -> dict[str, str]:
    """Write the report of `run`; returns the URIs of report.md and report.html."""
    keys = RunKeys(run)
    stored = StoredConfig.load(store, run)
    config = stored.config if stored else {}
    finetune = finetune_settings(stored)
    pin, _ = RunPin.load(store, run)
    manifest = read_dataset(store, pin.dataset, pin.dataset_version) if pin else None
    images: dict[str, bytes] = {}
    parts = [f"# Sora run report: {run}\n"]

    # What the run learned first (the eval table, then the curves), then where it came from; the
    # full config last, collapsed in the HTML (a browser renders <details> folded).
    parts.append("## Evaluation\n")
    parts.append(eval_markdown(store, run, finetune))

    parts.append("## Pretraining\n")
    parts.append(_pretraining(store, run, images, pin))
    parts.append("## Fine-tuning\n")
    ft_runs = finetune.run_names(run)
    parts.append(_finetuning(store, ft_runs, images, finetune.task))

    if distill := distill_markdown(store, run):  # "" when the run has no distillation
        parts.append(distill)
    if quantized := quantize_markdown(store, run):  # "" when the run has no quantized copies
        parts.append("## Quantization\n")
        parts.append(quantized)

    parts.append("## Data\n")
    parts.append(data_table(manifest) if manifest else "_the run has not pinned a dataset yet_\n")
    if manifest and (filters := filters_markdown(manifest)):
        parts.append("### Filters\n")
        parts.append(filters)

    parts.append("## Lineage\n")
    derived = {f"fine-tune from {i}": n for i, n in ft_runs.items()}
    derived |= distill_runs(store, run) | quantized_runs(store, run)
    parts.append(lineage_table(store, run, derived, manifest))

    parts.append("## Wall time per stage\n")
    parts.append(timing_table(store, run))

    parts.append("## Config\n")
    if config:
        dump = yaml.safe_dump(config, sort_keys=False)
        parts.append(f"<details><summary>the run's full config</summary>\n\n```yaml\n{dump}```\n\n</details>\n")
    else:
        parts.append("_no stored config_\n")

    markdown = "\n".join(parts)
    for name, png in images.items():
        store.write(f"{keys.prefix}/report/{name}", png)
    store.write(f"{keys.prefix}/report.md", markdown.encode())
    store.write(f"{keys.prefix}/report.html", _html(run, markdown, images).encode())
    return {"md": store.uri(f"{keys.prefix}/report.md"), "html": store.uri(f"{keys.prefix}/report.html")}


def _pretraining(store: ObjectStore, run: str, images: dict[str, bytes], pin: RunPin | None) -> str:
    rows = read_rows(store, RunKeys(run).metrics)
    if not rows:
        return "_not run yet_\n"
    images["pretrain.png"] = pretrain_curves(rows)
    last = rows[-1]
    val = [r for r in rows if r.val_loss is not None]
    return (
        f"{last.step} steps, {last.tokens:,} tokens, final loss {last.loss:.3f}"
        + (f", validation loss {val[-1].val_loss:.3f}" if val else "")
        + f", median {sorted(r.tokens_per_s for r in rows)[len(rows) // 2]:,.0f} tokens/s.\n\n"
        + (f"Stopped early: {last.data_exhausted}.\n\n" if last.data_exhausted else "")
        + _mixture_table(last, pin)
        + "![pretraining curves](report/pretrain.png)\n"
    )


def _mixture_table(last, pin: RunPin | None) -> str:
    """Tokens drawn per dataset of a mixture, against its weight."""
    if not last.tokens_by_dataset or not pin or not pin.data:
        return ""
    total = sum(last.tokens_by_dataset.values()) or 1
    lines = ["| dataset | version | weight | tokens | share | epochs begun |", "|---|---|---|---|---|---|"]
    for source in pin.data:
        tokens = last.tokens_by_dataset.get(source.dataset, 0)
        epochs = (last.epochs_by_dataset or {}).get(source.dataset, 0)
        lines.append(
            f"| {source.dataset} | v{source.dataset_version} | {source.weight:g} | {tokens:,} | "
            f"{tokens / total:.1%} | {epochs} |"
        )
    return "\n".join(lines) + "\n\n"


def _finetuning(store: ObjectStore, ft_runs: dict[str, str], images: dict[str, bytes], task: str) -> str:
    ft_rows = {init: read_rows(store, RunKeys(name).metrics) for init, name in ft_runs.items()}
    ft_rows = {init: r for init, r in ft_rows.items() if r}
    if not ft_rows:
        return "_not run yet_\n"
    images["finetune.png"] = finetune_curves(ft_rows)
    # A generative fine-tune's accuracy is of the next answer token (greedy), a classifier's of the label.
    accuracy = "answer-token accuracy" if task == "generate" else "accuracy"
    lines = [f"Task `{task}`.\n"]
    for init, r in ft_rows.items():
        best = max((x.val_accuracy for x in r if x.val_accuracy is not None), default=None)
        stop = " (early stopped)" if any(x.early_stopped for x in r) else ""
        lines.append(
            f"- from {init}: {r[-1].step} steps{stop}"
            + (f", best validation {accuracy} {best:.1%}" if best is not None else "")
            + "\n"
        )
    # One part each, joined as the report joins its parts (the markdown is unchanged by the split).
    return "\n".join([*lines, "\n![fine-tuning curves](report/finetune.png)\n"])


def _html(run: str, markdown: str, images: dict[str, bytes]) -> str:
    """Self-contained HTML: the same text, images inlined as data URIs."""
    for name, png in images.items():
        markdown = markdown.replace(f"(report/{name})", f"(data:image/png;base64,{base64.b64encode(png).decode()})")
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
        # Key-value tables have an empty header row (markdown tables need one): not shown.
        "thead:not(:has(th:not(:empty))){display:none}"
        # Numbers (right-aligned columns) never wrap: "37.7 ±" over "2.0" reads as two values.
        "td[style*=right]{white-space:nowrap}"
        "pre{background:#f6f6f6;padding:.5rem;overflow:auto}img{max-width:100%}"
    )
    head = f"<meta charset='utf-8'><title>Sora run {run}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"
