"""The architecture, enforced: packages of `pipeline/` import only packages in layers below them.

Every import counts, also the lazy ones inside functions (they are how the CLI stays fast, not a
way around the layers). Packages in one layer are siblings and never import each other, so the
package graph has no cycle. README.md ("Layout") shows the same diagram.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top to bottom. A package may import packages of any lower layer, never one of its own layer
# or above it.
LAYERS = [
    {"cli"},  # the `sora` command: argparse built from the command table
    {"stage_commands", "ops"},  # command handlers (stages; plan/submit/jobs)
    {"run"},  # `sora run`: every stage in order
    {"report"},  # reads what the stages stored
    {"distill", "quantize"},  # smaller and cheaper models made from an export (they use evaluation's loaders)
    {"evaluation"},  # lm-eval on exports, scratch baselines
    {"finetune", "pretrain"},  # the two objectives of the training job, with their drivers
    {"train", "suites"},  # the generic training job; downstream suites from held-out documents
    {"data"},  # the data stage: writes the dataset contract
    {"records"},  # typed stored documents
    {"ray_runtime"},
    {"console_log"},  # libraries' output to the log file (the CLI and ensure_ray install it)
    {"config"},
    {"storage"},
    {"commands", "keys", "errors", "faults", "resources", "after_import"},  # leaves
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (relative imports resolved)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    anchor = module.split(".")  # "pipeline.records.__init__" resolves "." to pipeline.records, as a module does
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = anchor[: -node.level]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> files where it happens."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        source = _package(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if source is None or source == "__init__":
            continue
        for name in _imports(path):
            target = _package(name)
            if target and target != source:
                edges.setdefault((source, target), []).append(str(path.relative_to(ROOT)))
    return edges


def test_every_package_has_a_layer():
    top = ROOT / "pipeline"
    modules = {p.stem for p in top.glob("*.py") if p.name != "__init__.py"}
    packages = {p.name for p in top.iterdir() if (p / "__init__.py").exists()}
    assert (modules | packages) - set(RANK) == set(), "add new packages to LAYERS (and to the README's diagram)"


def test_imports_point_down_the_layers():
    wrong = [
        f"{a} -> {b} ({', '.join(sorted(set(files)))})"
        for (a, b), files in sorted(package_edges().items())
        if RANK[b] <= RANK[a]
    ]
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


def test_the_model_library_does_not_import_the_pipeline():
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "sora").rglob("*.py"))
        if any(name == "pipeline" or name.startswith("pipeline.") for name in _imports(path))
    ]
    assert offenders == []
