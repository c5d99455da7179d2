"""`sora run`: the main job, every stage in order, on one config."""

from __future__ import annotations

from .config.run import RunConfig


def run_all(config: RunConfig) -> dict:
    """Run the stages that exist: today the data stage (pretrain and evaluation follow)."""
    from .data.stage import preprocess

    manifest = preprocess(config)
    return {"dataset": manifest}
