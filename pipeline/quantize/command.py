"""`sora quantize CONFIG`: quantize the run's export with `quantize.methods` and print what each measured."""

from __future__ import annotations

import argparse


def cmd_quantize(args: argparse.Namespace) -> None:
    from ..config.loader import load_config_with_overrides
    from .launch import quantize

    config = load_config_with_overrides(args.config, args.set)
    for method, record in quantize(config).items():
        print(
            f"{method}: {record.checkpoint_uri}  size {record.weight_bytes_after / 1e6:.2f} MB "
            f"(x{record.size_ratio:.2f})  {record.tokens_per_s_after:.1f} tokens/s "
            f"(x{record.speed_ratio:.2f} vs {record.tokens_per_s_before:.1f}, {record.device_name})  "
            f"max |logit diff| {record.logits_max_abs_diff:.4f}"
        )
