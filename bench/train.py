"""Benchmark of the pretrain stage against a plain PyTorch loop, measured in the same run.

Same model (tiny preset), same global batch, same data (the stdlib dataset built by the data
stage) and the same sample order:
  (a) the Ray Train + DeepSpeed ZeRO-3 job with N CPU workers (gloo);
  (b) a plain single-process PyTorch loop (AdamW, grad accumulation) using all cores.
Prints a JSON line with tokens/s and MFU of both, their ratio, and the split of the job's step
time into compute / data wait / checkpoint stall. On a GPU the same script reports bf16 MFU.

`--repeats` alternates job and plain loop that many times and reports the mean ratio and its
standard error (the machine's speed drifts between runs).

`--elastic` instead compares the job with `workers: [1, N]` (elastic) against `workers: N`, run
alternately `--repeats` times each, by wall time between steps (which includes the per-step
drain check): the ratio says what elasticity costs when no node comes or goes.

    python bench/train.py --steps 30
    python bench/train.py --elastic --steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from cpu_sampler import CpuSampler


def build_dataset(root: str):
    from pipeline.config.run import RunConfig
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter

    config = RunConfig.model_validate({"storage": {"root": root}})
    return config, preprocess(config, Reporter(quiet=True))


def ray_job(
    config, steps: int, workers, global_batch: int, micro_batch: int, strategy: str = "zero3", run: str = ""
) -> dict:
    from pipeline.config.run import RunConfig
    from pipeline.keys import RunKeys
    from pipeline.pretrain.launch import pretrain
    from pipeline.storage import open_store
    from pipeline.train.metrics import read_rows

    run = run or f"bench-{strategy}"
    raw = config.model_dump(mode="json")
    raw["train"] = {
        "run": run,
        "strategy": strategy,
        "workers": workers,
        "global_batch": global_batch,
        "micro_batch": micro_batch,
        "max_steps": steps,
        "checkpoint_interval": max(1, steps // 3),
        "eval_interval": steps,
        "log_interval": steps,
        "export": False,
    }
    run_config = RunConfig.model_validate(raw)
    started = time.perf_counter()
    with CpuSampler() as sampler:
        pretrain(run_config, quiet=True)
    wall = time.perf_counter() - started
    store = open_store(run_config.storage.root)
    rows = read_rows(store, RunKeys(run).metrics)
    steady = rows[2:] or rows
    gaps = [b["time"] - a["time"] for a, b in zip(steady, steady[1:], strict=False)]
    data = sum(r["data_wait_s"] for r in rows)
    compute = sum(r["compute_s"] for r in rows)
    stall = sum(r["checkpoint_stall_s"] for r in rows)
    total = data + compute + stall
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady),
        "peak": rows[0]["peak"],
        "wall_s": wall,
        "split": {"compute": compute / total, "data_wait": data / total, "checkpoint_stall": stall / total},
        "final_loss": rows[-1]["loss"],
        # Who used the cores while the job stepped (Ray's own processes, the driver, other load).
        "cpu_share_during_steps": sampler.share(steady[0]["time"], steady[-1]["time"]) if len(steady) > 1 else None,
        # Wall time between consecutive steps: the step plus everything around it (drain check, logging).
        "wall_tokens_per_s": rows[0]["tokens"] / rows[0]["step"] / statistics.median(gaps) if gaps else None,
    }


def elastic_vs_fixed(config, args) -> dict:
    """The same job with `workers: [1, N]` and `workers: N`, alternately, compared by wall time per step."""
    runs = {"fixed": [], "elastic": []}
    for repeat in range(args.repeats):
        for name, workers in (("fixed", args.workers), ("elastic", [1, args.workers])):
            job = ray_job(config, args.steps, workers, args.global_batch, args.micro_batch, run=f"{name}-{repeat}")
            runs[name].append(job["wall_tokens_per_s"])
    fixed, elastic = statistics.mean(runs["fixed"]), statistics.mean(runs["elastic"])
    return {"bench": "train-elastic", "workers": args.workers, "steps": args.steps, "runs_tokens_per_s": runs,
            "ratio_elastic_vs_fixed": elastic / fixed}  # fmt: skip


def plain_loop(config, manifest, steps: int, global_batch: int, micro_batch: int) -> dict:
    from pipeline.pretrain.launch import model_config_for
    from pipeline.pretrain.objective import LanguageModeling
    from pipeline.storage import open_store
    from pipeline.train.engine import lr_lambda
    from pipeline.train.loader import TrainLoader
    from sora import SoraForCausalLM, causal_lm_loss, flops_per_token
    from sora.flops import measure_cpu_matmul_peak

    torch.set_num_threads(os.cpu_count() or 1)  # all cores
    model_config = model_config_for(config, manifest)
    torch.manual_seed(config.train.seed)
    model = SoraForCausalLM(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.train))
    store = open_store(config.storage.root)
    stream = LanguageModeling.for_run(config.train, [(manifest, 1.0)]).train_samples(store, manifest, config.train.seed)
    loader = TrainLoader(stream, global_batch, micro_batch, 0, 1)
    rates = []
    for _ in range(steps):
        started = time.perf_counter()
        micro, _ = loader.next_step()
        for inputs, labels in micro:
            loss = causal_lm_loss(model(inputs, use_cache=False).logits, labels) / len(micro)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(global_batch * manifest.seq_len / (time.perf_counter() - started))
    tokens_per_s = statistics.median(rates[2:] or rates)
    peak = measure_cpu_matmul_peak()
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops_per_token(model_config, manifest.seq_len) / peak,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument(
        "--strategy", default="zero3", help="the job's strategy (zero1/zero2 isolate ZeRO-3's own cost)"
    )
    parser.add_argument("--elastic", action="store_true", help="compare workers [1, N] with N instead")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config, manifest = build_dataset(f"file://{tmp}/store")
        if args.elastic:
            print(json.dumps(elastic_vs_fixed(config, args)), flush=True)
            return
        # Job and plain loop alternate `--repeats` times: the machine's speed drifts (a VM's
        # neighbours), so each ratio compares neighbours in time, and their spread is reported.
        pairs = []
        for repeat in range(args.repeats):
            run = f"bench-{args.strategy}-{repeat}"
            job = ray_job(config, args.steps, args.workers, args.global_batch, args.micro_batch, args.strategy, run)
            plain = plain_loop(config, manifest, args.steps, args.global_batch, args.micro_batch)
            pairs.append((job, plain))
    ratios = [job["tokens_per_s"] / plain["tokens_per_s"] for job, plain in pairs]
    job, plain = pairs[-1]
    print(
        json.dumps(
            {
                "bench": "train",
                "model": "tiny",
                "seq_len": manifest.seq_len,
                "global_batch": args.global_batch,
                "steps": args.steps,
                f"ray_deepspeed_{args.strategy}": {
                    "workers": args.workers,
                    **{k: job[k] for k in ("tokens_per_s", "mfu", "peak", "split", "cpu_share_during_steps")},
                },
                "plain_pytorch": plain,
                "ratios_job_vs_plain": ratios,
                "ratio_job_vs_plain": statistics.mean(ratios),
                "ratio_stderr": statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else None,
                "job_wall_s_including_startup": job["wall_s"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
