"""Load a YAML run config into `RunConfig`, turning validation errors into one clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import UserError
from ..resources import config_names, packaged_config
from .run import RunConfig


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read `path` (YAML): a file, or else the name of a config shipped in the package (`default`,
    `cluster-pretrain.yaml`); `overrides` maps dotted keys (`data.seq_len`) to values."""
    path = Path(path) if Path(path).is_file() else (packaged_config(str(path)) or Path(path))
    if not path.is_file():
        raise UserError(f"config file {path} not found (packaged configs: {', '.join(config_names())})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors())
        raise UserError(f"invalid config {path}: {problems}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set` pairs `KEY=VALUE` (dotted key, YAML value) as the `overrides` of `load_config`."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (dotted key, YAML value), got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_config_with_overrides(path: str | Path, pairs: list[str]) -> RunConfig:
    """`load_config(path)` with the `--set KEY=VALUE` pairs of the command line applied."""
    return load_config(path, parse_overrides(pairs))
