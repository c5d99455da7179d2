"""Weight-only int8 (torchao, through transformers' `TorchAoConfig`, what `sora quantize` runs) against
the full-precision model it came from, measured in the same run on the current device.

A randomly initialized `SoraForCausalLM` of a preset is saved as an HF checkpoint, quantized with the
same settings `pipeline/quantize/task.py` uses (projections only; embeddings, the LM head and norms
kept), saved, and reloaded from disk. Printed: weight bytes on disk, greedy generation tokens/s
(`new_tokens` after a `prompt_tokens` prompt, median of `repeats` after a warmup) and the largest
logit difference on the prompt, each as a ratio to the original.

    python bench/quantize.py --preset small --overrides num_hidden_layers=4
    python bench/quantize.py --preset tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--overrides", nargs="*", default=["num_hidden_layers=4"], help="KEY=INT model overrides")
    parser.add_argument("--method", default="int8", choices=["int8", "int4"])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.evaluation.harness import eval_dtype, resolve_device
    from pipeline.quantize.benchmark import benchmark_prompt, generation_tokens_per_s, prompt_logits, weight_bytes
    from pipeline.quantize.methods import check_methods, kept_linears, transformers_config
    from sora import SoraConfig, SoraForCausalLM

    device = resolve_device("auto")
    dtype = getattr(torch, eval_dtype(device))
    check_methods([args.method], device, device == "cuda" and torch.cuda.is_bf16_supported())
    overrides = {key: int(value) for key, value in (item.split("=") for item in args.overrides)}
    config = SoraConfig.from_preset(args.preset, **overrides)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="sora-bench-quantize-") as tmp:
        source, target = Path(tmp) / "source", Path(tmp) / args.method
        SoraForCausalLM(config).save_pretrained(source)
        original = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device).eval()
        prompt = benchmark_prompt(config.vocab_size, args.prompt_tokens, 0, device)
        speed_before = generation_tokens_per_s(original, prompt, args.new_tokens, args.repeats)
        logits_before = prompt_logits(original, prompt)
        quant_config = transformers_config(args.method, 128, kept_linears(original))
        del original
        quantized = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, device_map=device, quantization_config=quant_config
        )
        quantized.save_pretrained(target)
        del quantized
        reloaded = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, device_map=device).eval()
        speed_after = generation_tokens_per_s(reloaded, prompt, args.new_tokens, args.repeats)
        diff = float((prompt_logits(reloaded, prompt) - logits_before).abs().max())
        size_before, size_after = weight_bytes(source), weight_bytes(target)
    result = {
        "preset": args.preset,
        "overrides": overrides,
        "method": args.method,
        "device": device,
        "dtype": str(dtype),
        "weight_bytes": {"original": size_before, args.method: size_after, "ratio": round(size_after / size_before, 3)},
        "tokens_per_s": {
            "original": round(speed_before, 1),
            args.method: round(speed_after, 1),
            "ratio": round(speed_after / speed_before, 3),
        },
        "logits_max_abs_diff": round(diff, 5),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
