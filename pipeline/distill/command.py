"""Handler of `sora distill CONFIG` (declared in `pipeline.commands`): imports the stage (torch, ray)
only when it runs."""

from __future__ import annotations

import argparse


def cmd_distill(args: argparse.Namespace) -> None:
    """Distill the teacher into a smaller student, and train the same student without it (same tokens)."""
    from ..config.loader import load_config_with_overrides
    from ..run import record_config
    from ..storage import open_store
    from .launch import distill

    config = load_config_with_overrides(args.config, args.set)
    record_config(open_store(config.storage.root, config.storage.settings()), config)
    for kind, result in distill(config, restart=args.restart).items():
        final = result.get("final", {})
        state = "already finished" if result.get("skipped") else f"step {final.get('step')}"
        if final.get("val_loss") is not None:
            state += f", val loss {final['val_loss']:.4f}"
        print(f"distill {kind}: {state}; export {result.get('export')}")
