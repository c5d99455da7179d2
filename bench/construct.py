"""Host memory of building a model on N ranks: partitioned (ZeRO-3 `zero.Init`) vs whole on each rank.

Each rank is a real process in a gloo group, set up the way Ray Train sets up a worker. It records
its resident memory once everything is imported and the process group is up, builds the model the
way the pretrain engine does, and reports the growth of its peak resident memory (`ru_maxrss`) and
the parameter elements it holds. The baseline is the same build with ZeRO stage 1 (every rank
holds the whole model), measured in the same run.

    python bench/construct.py --preset small --ranks 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile

import torch.multiprocessing as mp


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _rank(rank: int, ranks: int, port: int, preset: str, strategy: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks))
    import deepspeed
    import torch

    from pipeline.config.run import RunConfig
    from pipeline.train.ds_config import deepspeed_config
    from pipeline.train.engine import build_flat_model
    from sora import SoraConfig

    deepspeed.init_distributed(dist_backend="gloo")
    train = RunConfig.model_validate({"train": {"strategy": strategy, "workers": ranks}}).train
    ds_config = deepspeed_config(train, bf16=False)
    before = _rss_mib()
    torch.manual_seed(0)
    model, _context = build_flat_model(SoraConfig.from_preset(preset), ds_config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    after = _rss_mib()
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    row = {"rank": rank, "rss_before_mib": before, "peak_growth_mib": peak - before, "growth_after_mib": after - before}
    with open(f"{out}/{strategy}-{rank}.json", "w") as f:
        json.dump({**row, "held": held}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(preset: str, ranks: int, strategy: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank, args=(ranks, _free_port(), preset, strategy, out), nprocs=ranks, start_method="spawn")
        return [json.load(open(f"{out}/{strategy}-{r}.json")) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    from sora import SoraConfig, count_parameters

    total = count_parameters(SoraConfig.from_preset(args.preset))["total"]
    whole = measure(args.preset, args.ranks, "zero1")
    partitioned = measure(args.preset, args.ranks, "zero3")
    worst = {name: max(r["peak_growth_mib"] for r in rows) for name, rows in (("whole", whole), ("zero3", partitioned))}
    print(
        json.dumps(
            {
                "preset": args.preset,
                "ranks": args.ranks,
                "parameters": total,
                "fp32_model_mib": round(total * 4 / 2**20, 1),
                "whole_build": whole,
                "partitioned_build": partitioned,
                "peak_growth_mib_whole": round(worst["whole"], 1),
                "peak_growth_mib_partitioned": round(worst["zero3"], 1),
                "ratio_partitioned_over_whole": round(worst["zero3"] / worst["whole"], 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
