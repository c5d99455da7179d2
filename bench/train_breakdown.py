"""Where the pretrain job's step time goes on CPU: the same step measured in layers, in one run.

Same model (the tiny preset, the stdlib tokenizer's vocabulary of 4096), same global batch and
micro-batch as `bench/train.py`, random tokens (the step's cost does not depend on their values).
Each layer adds one part of the job:

    plain-2threads    one process, 2 intra-op threads: bench/train.py's baseline
    plain-1thread     one process, 1 thread, a rank's half of the batch (x2: two ranks' ideal rate)
    independent       2 spawned ranks x 1 thread, each on its half, no communication at all
    ddp-gloo          2 spawned ranks x 1 thread, gradients all-reduced over gloo (torch DDP)
    deepspeed-zeroN   2 spawned ranks x 1 thread, Sora's `Engine` (DeepSpeed ZeRO-N), no Ray
    (the Ray job itself is bench/train.py's `ray_deepspeed_zero3`)

Prints one JSON line: tokens/s of each layer per round (median over steps after warm-up), and
each one's ratio to the same round's plain-2threads, mean and standard error over `--rounds`.
The difference between two neighbouring layers is what the added part costs: thread vs process
parallelism, gradient communication, ZeRO's hooks and partitioning.

    python bench/train_breakdown.py --steps 12 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

VOCAB, SEQ = 4096, 256


def model_config():
    from sora import SoraConfig

    return SoraConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=SEQ)


def batches(step: int, rank: int, micro: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(step * 1000 + rank)
    out = []
    for _ in range(count):
        tokens = torch.randint(0, VOCAB, (micro, SEQ + 1), generator=generator)
        out.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return out


def plain(steps: int, global_batch: int, micro: int, threads: int, share: float = 1.0) -> float:
    """One process: AdamW with gradient accumulation over `share` of the global batch."""
    from sora import SoraForCausalLM, causal_lm_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SoraForCausalLM(model_config())
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    count = int(global_batch * share) // micro
    rates = []
    for step in range(steps):
        micro_batches = batches(step, 0, micro, count)
        started = time.perf_counter()
        for inputs, labels in micro_batches:
            (causal_lm_loss(model(inputs).logits, labels) / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(count * micro * SEQ / (time.perf_counter() - started))
    return statistics.median(rates[2:] or rates)


def _rank(rank: int, world: int, port: int, kind: str, steps: int, global_batch: int, micro: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)  # what a Ray Train worker with one CPU gets (OMP_NUM_THREADS=1)
    count = global_batch // world // micro
    if kind == "independent":
        step_fn = _independent(world)
    elif kind == "ddp-gloo":
        step_fn = _ddp(world)
    else:
        step_fn = _deepspeed(kind, world, global_batch, micro)
    rates = []
    for step in range(steps):
        micro_batches = batches(step, rank, micro, count)
        started = time.perf_counter()
        step_fn(micro_batches)
        rates.append(global_batch * SEQ / (time.perf_counter() - started))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(statistics.median(rates[2:] or rates), f)
    dist.barrier()
    dist.destroy_process_group()


def _independent(world: int):
    """Each rank steps its own model on its share, no communication: what two processes on the
    machine's cores cost each other (memory bandwidth, caches) without any framework."""
    from sora import SoraForCausalLM, causal_lm_loss

    dist.init_process_group("gloo", world_size=world)  # only for the final barrier
    torch.manual_seed(0)
    model = SoraForCausalLM(model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(micro_batches):
        for inputs, labels in micro_batches:
            (causal_lm_loss(model(inputs, use_cache=False).logits, labels) / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _ddp(world: int):
    from torch.nn.parallel import DistributedDataParallel

    from sora import SoraForCausalLM, causal_lm_loss

    dist.init_process_group("gloo", world_size=world)
    torch.manual_seed(0)
    model = DistributedDataParallel(SoraForCausalLM(model_config()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(micro_batches):
        for index, (inputs, labels) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            context = model.no_sync() if not last else _nothing()
            with context:
                (causal_lm_loss(model(inputs, use_cache=False).logits, labels) / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _deepspeed(kind: str, world: int, global_batch: int, micro: int):
    import deepspeed

    from pipeline.config.train import TrainConfig
    from pipeline.pretrain.objective import LanguageModeling
    from pipeline.train.ds_config import deepspeed_config
    from pipeline.train.engine import Engine

    deepspeed.init_distributed(dist_backend="gloo")
    strategy, _, variant = kind.removeprefix("deepspeed-").partition("-")
    objective = LanguageModeling()
    if variant == "plain-build":  # built whole, then partitioned by deepspeed.initialize
        from sora import SoraForCausalLM

        objective.build_model = lambda config, ds_config: (SoraForCausalLM(config), None)
    train = TrainConfig(strategy=strategy, workers=world, global_batch=global_batch, micro_batch=micro, max_steps=100)
    ds_config = deepspeed_config(train, bf16=False, split=train.split(world))
    if variant.startswith("grain"):  # ZeRO-3 fetches modules below this granularity as one unit
        ds_config["zero_optimization"]["stage3_module_granularity_threshold"] = int(float(variant[5:]))
    if variant.startswith("persist"):  # parameters below this many elements are never partitioned
        ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = int(float(variant[7:]))
    engine = Engine(train, model_config(), ds_config, torch.device("cpu"), objective)
    return engine.train_step


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def distributed(kind: str, steps: int, global_batch: int, micro: int, world: int = 2) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rate.json")
        port = 29500 + os.getpid() % 1000
        # What Ray gives a worker with one CPU, read by OpenMP when a rank starts: without it
        # DeepSpeed's CPU comm op runs OpenMP threads per rank (oversubscribed: ZeRO-1 at 0.86 of
        # plain instead of 1.12, measured).
        os.environ["OMP_NUM_THREADS"] = "1"
        mp.spawn(_rank, args=(world, port, kind, steps, global_batch, micro, out), nprocs=world, join=True)
        with open(out) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument(
        "--layers", default="plain-2threads,plain-1thread,independent,ddp-gloo,deepspeed-zero1,deepspeed-zero3"
    )
    parser.add_argument("--rounds", type=int, default=3, help="times every layer is measured, in turn")
    args = parser.parse_args()
    layers = args.layers.split(",")
    # Every layer once per round, and each round's rates over its own plain-2threads: a VM's speed
    # drifts by tens of percent over minutes (its neighbours), so only neighbours in time compare.
    rounds = []
    for _ in range(args.rounds):
        rates = {}
        for layer in layers:
            if layer == "plain-2threads":
                rates[layer] = plain(args.steps, args.global_batch, args.micro_batch, threads=2)
            elif layer == "plain-1thread":  # one rank's half of the batch, scaled to two ranks
                rates[layer] = 2 * plain(args.steps, args.global_batch, args.micro_batch, threads=1, share=0.5)
            else:
                rates[layer] = distributed(layer, args.steps, args.global_batch, args.micro_batch)
        rounds.append(rates)
    result = {"bench": "train-breakdown", "rounds": rounds}
    if "plain-2threads" in layers:
        ratios = {layer: [r[layer] / r["plain-2threads"] for r in rounds] for layer in layers}
        result["ratio_vs_plain_2threads"] = {
            layer: {
                "mean": statistics.mean(values),
                "stderr": statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None,
            }
            for layer, values in ratios.items()
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
