"""The report's distillation section, from stored files alone: the run's stored config names the
student and baseline runs; their exports and metrics give sizes, tokens and validation losses."""

from __future__ import annotations

from sora import SoraConfig, count_parameters

from ..config.distill import DistillConfig
from ..evaluation.derived import DISTILL_EVAL_NAMES as EVAL_NAMES
from ..keys import RunKeys
from ..records import ExportInfo, StoredConfig
from ..records.export import load_export
from ..storage import ObjectStore
from ..train.metrics import read_rows


def stored_distill(store: ObjectStore, run: str) -> DistillConfig | None:
    """The enabled `distill:` section of the run's stored config, or None."""
    stored = StoredConfig.load(store, run)
    try:
        distill = DistillConfig.model_validate(stored.section("distill")) if stored else None
    except ValueError:  # a config stored under another schema: no section rather than a broken report
        return None
    return distill if distill is not None and distill.enabled else None


def distill_runs(store: ObjectStore, run: str) -> dict[str, str]:
    """{label: run name} of the distilled student and its baseline (the report's lineage table)."""
    distill = stored_distill(store, run)
    if distill is None:
        return {}
    teacher = distill.teacher_run or run
    return {f"distill ({kind})": distill.run_name(teacher, kind) for kind in EVAL_NAMES}


def distill_markdown(store: ObjectStore, run: str) -> str:
    """A short Markdown section (teacher, student sizes, tokens, final validation losses), or "" when
    the run's stored config has no enabled distillation."""
    distill = stored_distill(store, run)
    if distill is None:
        return ""
    teacher = distill.teacher_run or run
    names = {"teacher": teacher, **{kind: distill.run_name(teacher, kind) for kind in EVAL_NAMES}}
    roles = {
        "teacher": "teacher (frozen)",
        "distilled": f"student, distilled (alpha {distill.kl_weight:g}, T {distill.temperature:g})",
        "baseline": "student, no teacher (same tokens, seed, data order)",
    }
    lines = [
        "## Distillation",
        "",
        f"Student `{distill.student_label()}` trained on the teacher's data with loss (1 - alpha) x CE + alpha x "
        "T^2 x KL(teacher || student); the baseline is the same student trained on the same tokens without "
        "the teacher. Validation loss is next-token cross-entropy on the same validation blocks.",
        "",
        "| run | role | parameters | layers x hidden | steps | tokens | final val loss |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for kind, name in names.items():
        lines.append(_row(store, name, roles[kind]))
    lines += [
        "",
        f"Their scores on the evaluation suites are in the evaluation table: `{EVAL_NAMES['distilled']}` and "
        f"`{EVAL_NAMES['baseline']}`, next to `pretrained`.",
        "",
    ]
    return "\n".join(lines)


def _row(store: ObjectStore, run: str, role: str) -> str:
    if not store.exists(f"{RunKeys(run).export}/config.json"):
        return f"| `{run}` | {role} | not trained yet | | | | |"
    _, info, hf_config = load_export(store, run)
    config = SoraConfig.from_dict(hf_config)
    rows = read_rows(store, RunKeys(run).metrics)
    tokens = rows[-1].get("tokens") if rows else None
    return (
        f"| `{run}` | {role} | {count_parameters(config)['total']:,} | "
        f"{config.num_hidden_layers} x {config.hidden_size} | {info.step} | "
        f"{_number(tokens)} | {_loss(info)} |"
    )


def _number(value: int | None) -> str:
    return f"{value:,}" if value is not None else "-"


def _loss(info: ExportInfo) -> str:
    return f"{info.val_loss:.4f}" if info.val_loss is not None else "-"
