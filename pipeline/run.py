"""`sora run`: the main job, every stage in order, on one config."""

from __future__ import annotations

from .config.run import RunConfig


def run_all(config: RunConfig) -> dict:
    """Run the stages that exist: data (build or refresh) then pretrain (resumes if interrupted).

    The fine-tune + evaluate stage follows in a later issue.
    """
    from .data.stage import preprocess
    from .train.launch import pretrain

    manifest = preprocess(config)
    result = pretrain(config)
    return {"dataset": manifest, "pretrain": result}
