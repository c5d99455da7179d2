"""Measurements of a checkpoint before and after quantization: weight bytes on disk, greedy
generation speed and how far its logits moved.

Generation speed is tokens/s of `generate` with greedy decoding and exactly `new_tokens` new tokens
(end-of-sequence ignored), from the same seeded prompt for both models: one warmup call first (kernel
selection, allocator, lazy inits are not the model's speed), then the median of `repeats` timed calls.
"""

from __future__ import annotations

import statistics
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

WEIGHT_SUFFIX = ".safetensors"
WEIGHT_FILES = "model*.safetensors"  # model.safetensors, or its shards model-0000x-of-0000N.safetensors


def is_weight_file(name: str) -> bool:
    """Whether a checkpoint file holds weights (what `save_pretrained` writes for them; not the index)."""
    return fnmatch(name, WEIGHT_FILES)


def weight_bytes(folder: Path) -> int:
    """Bytes of the checkpoint's weight files (`*.safetensors`; config and tokenizer not counted)."""
    return sum(path.stat().st_size for path in folder.iterdir() if path.name.endswith(WEIGHT_SUFFIX))


def benchmark_prompt(vocab_size: int, length: int, seed: int, device: str):
    """A fixed prompt of `length` token ids (seeded, so every model of a run gets the same one)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, length), generator=generator).to(device)


def generation_tokens_per_s(model: Any, prompt, new_tokens: int, repeats: int) -> float:
    """Median tokens/s of greedy generation of exactly `new_tokens` tokens after `prompt` (warmup excluded)."""
    import torch

    def generate_once() -> float:
        _synchronize(prompt.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # an end-of-sequence token must not shorten a timed run
                do_sample=False,
                pad_token_id=0,
            )
        _synchronize(prompt.device)
        assert out.shape[1] == prompt.shape[1] + new_tokens
        return time.perf_counter() - start

    generate_once()  # warmup
    return new_tokens / statistics.median(generate_once() for _ in range(repeats))


def prompt_logits(model: Any, prompt):
    """The model's float32 logits for `prompt`, on the CPU (to compare two models)."""
    import torch

    with torch.inference_mode():
        return model(prompt).logits.float().cpu()


def device_name(device: str) -> str:
    """A readable name of the device (the GPU's model, the CPU's model or architecture)."""
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
