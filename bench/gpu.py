"""GPU benchmark for a lent machine: MFU of `small` and `1b` in bf16, activation checkpointing off
and on, and the asynchronous checkpoint stall, in one command that fits 8 minutes on one GPU.

Each measurement runs Sora's own training step (`pipeline.train.engine.Engine`: the DeepSpeed
engine the Ray Train workers build, the run's DeepSpeed config) in a fresh process of one rank
(NCCL on a GPU, gloo on CPU), on random tokens of the preset's vocabulary: the step's cost does not
depend on the token values, and nothing has to be downloaded. MFU is model FLOPs per token
(`sora.flops.flops_per_token`, 6N plus attention) x tokens/s over the device's dense bf16 peak
(`sora.flops.peak_flops`: the datasheet value for known GPUs, a measured matmul peak on CPU).

    python bench/gpu.py                  # on the GPU machine: small + 1b, checkpointing off/on
    python bench/gpu.py --cpu            # the CPU path (tiny shapes, seconds): what the tests run

Prints one JSON line per measurement as it finishes, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

# (preset, overrides, sequence length, micro-batch, gradient accumulation) per scale.
GPU_CASES = {
    "small": ("small", {}, 2048, 8, 1),
    "1b": ("1b", {}, 2048, 4, 2),
}
CPU_CASES = {  # the same code path at shapes a 2-core CPU steps in well under a second
    "tiny": ("tiny", {}, 128, 2, 1),
    "tiny-deep": ("tiny", {"num_hidden_layers": 6}, 128, 2, 1),
}


def measure(case: dict) -> dict:
    """One training configuration in a fresh single-rank process; returns its JSON record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        port = 29700 + os.getpid() % 200
        mp.spawn(_rank, args=(case, port, out), nprocs=1, join=True)
        with open(out) as f:
            return json.load(f)


def _rank(rank: int, case: dict, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed

    from pipeline.config.train import TrainConfig
    from pipeline.pretrain.objective import LanguageModeling
    from pipeline.train.ds_config import deepspeed_config
    from pipeline.train.engine import Engine
    from sora import SoraConfig, flops_per_token
    from sora.flops import peak_flops
    from sora.layers import SoraBlock

    cuda = torch.cuda.is_available() and not case["cpu"]
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    model_config = SoraConfig.from_preset(case["preset"], **case["overrides"])
    model_config.max_position_embeddings = max(model_config.max_position_embeddings, case["seq_len"])
    micro, accum = case["micro_batch"], case["grad_accum"]
    train = TrainConfig(
        strategy=case["strategy"],
        workers=1,
        global_batch=micro * accum,
        micro_batch=micro,
        max_steps=10_000,
        activation_checkpointing=case["activation_checkpointing"],
    )
    ds_config = deepspeed_config(train, bf16=bf16, split=train.split(1))
    engine = Engine(train, model_config, ds_config, device, LanguageModeling())
    vocab, seq = model_config.vocab_size, case["seq_len"]
    generator = torch.Generator().manual_seed(0)

    def batch():
        tokens = torch.randint(0, vocab, (micro, seq + 1), generator=generator)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step() -> float:
        micro_batches = [batch() for _ in range(accum)]
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        engine.train_step(micro_batches)  # returns a Python float: synchronizes with the device
        return time.perf_counter() - started

    for _ in range(case["warmup"]):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, deadline = [], time.perf_counter() + case["seconds"]
    while len(times) < case["steps"] and (len(times) < 3 or time.perf_counter() < deadline):
        times.append(step())
    seconds = statistics.median(times)
    tokens_per_s = micro * accum * seq / seconds
    peak, label = peak_flops(device)
    module = engine.engine.module
    blocks = [m for m in module.modules() if isinstance(m, SoraBlock)]
    record = {
        "case": case["name"],
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "precision": "bf16" if bf16 else "fp32",
        "strategy": case["strategy"],
        "activation_checkpointing": case["activation_checkpointing"],
        "checkpointed_blocks": sum(bool(getattr(m, "gradient_checkpointing", False)) for m in blocks),
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters()),
        "seq_len": seq,
        "micro_batch": micro,
        "grad_accum": accum,
        "steps_measured": len(times),
        "step_s": seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops_per_token(model_config, seq) / peak,
        "peak": label,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    with open(out, "w") as f:
        json.dump(record, f)


def checkpoint_stall(cpu: bool, bandwidth_mb: float) -> dict:
    """Stall share of synchronous vs asynchronous checkpoints (bench/checkpoint_stall.py) with one
    worker: `small` on the GPU, checkpoints every 5 steps to a store held to `bandwidth_mb`."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from checkpoint_stall import main as stall_bench

    model = "tiny" if cpu else "small"
    result = stall_bench(
        ["--model", model, "--workers", "1", "--steps", "20", "--interval", "5", "--bandwidth-mb", str(bandwidth_mb)]
    )
    keys = ("stall_share_sync", "stall_share_async", "ratio_async_vs_sync")
    return {"model": model, "bandwidth_mb_s": bandwidth_mb, **{k: result[k] for k in keys}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the CPU path: tiny shapes, a few steps")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all of the device's)")
    parser.add_argument("--strategy", default="zero1", help="DeepSpeed strategy of the one rank (zero1/zero3)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per configuration (after warm-up)")
    parser.add_argument("--seconds", type=float, default=45.0, help="time cap of a configuration's measured steps")
    parser.add_argument(
        "--stall",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure the async checkpoint stall (bench/checkpoint_stall.py: one GPU worker, the small "
        "model, sync vs async against a throttled store); default: on a GPU only (minutes on a CPU)",
    )
    parser.add_argument("--bandwidth-mb", type=float, default=200.0, help="the stall job's upload bandwidth, MB/s")
    args = parser.parse_args(argv)
    cpu = args.cpu or not torch.cuda.is_available()
    cases = CPU_CASES if cpu else GPU_CASES
    names = args.cases.split(",") if args.cases else list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {sorted(cases)}")
    records = []
    for name in names:
        preset, overrides, seq_len, micro, accum = cases[name]
        for checkpointing in (0, 1):
            case = dict(
                name=name, preset=preset, overrides=overrides, seq_len=seq_len, micro_batch=micro, grad_accum=accum,
                strategy=args.strategy, activation_checkpointing=checkpointing, cpu=cpu,
                warmup=1 if cpu else 3, steps=args.steps, seconds=args.seconds,
            )  # fmt: skip
            record = measure(case)
            records.append(record)
            print(json.dumps(record), flush=True)
    summary = {
        "bench": "gpu",
        "mfu": {f"{r['case']} checkpointing={r['activation_checkpointing']}": round(r["mfu"], 4) for r in records},
    }
    if args.stall if args.stall is not None else not cpu:
        summary["checkpoint_stall"] = checkpoint_stall(cpu, args.bandwidth_mb)
    print(json.dumps(summary), flush=True)
    return records


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
