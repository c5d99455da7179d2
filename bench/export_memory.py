"""Host memory of the HF export on global rank 0: streamed (export.py) vs the previous consolidation.

Each rank is a real process in a gloo group. It builds the pretrain engine (ZeRO-3, or a 2-stage
pipeline with ZeRO-1), then exports the weights into a local store, and reports how far its resident
memory peaked above what it held just before the export (VmHWM reset through /proc/self/clear_refs).
The baseline, measured in the same run in fresh processes, is the previous export: every parameter
gathered and cloned into one fp32 state dict on rank 0 (pipeline: every stage's dict pickled to rank
0 with `gather_object`), loaded into a second model object, written by `save_pretrained`. Only the
weights are exported in both (the tokenizer and configs are the same few KB).

    python bench/export_memory.py --preset small --strategy zero3 --ranks 2
    python bench/export_memory.py --preset small --strategy pipeline --ranks 2 --hidden 1024 --layers 16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time

import torch.multiprocessing as mp


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _previous_export(engine, model_config, folder: str) -> None:
    """The export before streaming (engine.py `full_state_dict` + the objective's `export_model` +
    `save_pretrained`), kept here as the baseline."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from pipeline.train.export import EXPORT_SHARD_SIZE
    from sora import SoraForCausalLM
    from sora.pipeline_view import pipeline_to_flat_state_dict

    rank = dist.get_rank()
    if engine.pipeline:
        module = engine.engine.module
        local = {}
        if engine.engine.grid.data_parallel_id == 0:
            for offset, layer in enumerate(module.forward_funcs):
                if isinstance(layer, torch.nn.Module):
                    index = module._local_start + offset
                    # .clone(): on a GPU .cpu() copies; on CPU the tensor would stay a view of ZeRO's
                    # flat buffer and gather_object would pickle the whole buffer for each tensor
                    # (12 GB on rank 0 for `small`, killed; the previous code on CPU did exactly that).
                    state = layer.state_dict().items()
                    local.update({f"{index}.{k}": v.detach().float().cpu().clone() for k, v in state})
        gathered = [None] * dist.get_world_size() if rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
        state = None
        if rank == 0:
            merged = {k: v for part in gathered for k, v in (part or {}).items()}
            state = pipeline_to_flat_state_dict(merged, model_config)
    else:
        state = {}
        for name, param in engine.engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if rank == 0:
                    state[name] = param.detach().float().cpu().clone()
        if model_config.tie_word_embeddings and rank == 0:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
    if rank == 0:
        model = SoraForCausalLM(model_config)
        model.load_state_dict(state, strict=False)
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=EXPORT_SHARD_SIZE)


def _streamed_export(engine, objective, model_config, folder: str) -> None:
    """What `Trainer.export` does for the weights."""
    from pathlib import Path

    import torch.distributed as dist

    from pipeline.storage import open_store
    from pipeline.train.export import HFExport, export_plan

    plan = export_plan(objective.export_skeleton(model_config))
    export = None
    if dist.get_rank() == 0:
        export = HFExport(open_store(f"file://{folder}/store"), "bench", plan, Path(folder) / "scratch")
    engine.export_weights(plan, export.write if export else None)


def _model_config(args: dict):
    from sora import SoraConfig

    overrides = {}
    if args["hidden"]:
        heads = args["hidden"] // 64
        overrides.update(hidden_size=args["hidden"], intermediate_size=args["hidden"] * 4)
        overrides.update(num_attention_heads=heads, num_key_value_heads=heads)
    if args["layers"]:
        overrides["num_hidden_layers"] = args["layers"]
    return SoraConfig.from_preset(args["preset"], **overrides)


def _rank(rank: int, ranks: int, port: int, args: dict, variant: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks))
    import deepspeed
    import torch
    import torch.distributed as dist

    from pipeline.config.run import RunConfig
    from pipeline.pretrain.objective import LanguageModeling
    from pipeline.train.ds_config import deepspeed_config
    from pipeline.train.engine import Engine

    deepspeed.init_distributed(dist_backend="gloo")
    stages = ranks if args["strategy"] == "pipeline" else 1
    fields = {"strategy": args["strategy"], "workers": ranks, "pipeline_stages": stages}
    train = RunConfig.model_validate({"train": {**fields, "global_batch": ranks, "micro_batch": 1}}).train
    model_config = _model_config(args)
    objective = LanguageModeling()
    engine = Engine(train, model_config, deepspeed_config(train, bf16=False), torch.device("cpu"), objective)
    dist.barrier()
    with tempfile.TemporaryDirectory() as folder:
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak resident set) to the current RSS
        started = time.perf_counter()
        if variant == "previous":
            _previous_export(engine, model_config, folder)
        else:
            _streamed_export(engine, objective, model_config, folder)
        seconds = time.perf_counter() - started
        peak = _status("VmHWM")
        dist.barrier()
    row = {"rank": rank, "rss_before_mib": round(before, 1), "peak_growth_mib": round(peak - before, 1)}
    with open(f"{out}/{variant}-{rank}.json", "w") as f:
        json.dump({**row, "seconds": round(seconds, 2)}, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args: dict, variant: str) -> list[dict]:
    ranks = args["ranks"]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_rank, args=(ranks, _free_port(), args, variant, out), nprocs=ranks, start_method="spawn")
        return [json.load(open(f"{out}/{variant}-{r}.json")) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--strategy", choices=["zero3", "pipeline"], default="zero3")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=0, help="override hidden_size (intermediate 4x, heads of 64)")
    parser.add_argument("--layers", type=int, default=0, help="override num_hidden_layers")
    args = vars(parser.parse_args())
    previous, streamed = measure(args, "previous"), measure(args, "streamed")
    from sora import count_parameters

    config = _model_config(args)
    total = count_parameters(config)["total"]
    model_mib = total * 4 / 2**20
    largest = max(config.vocab_size * config.hidden_size, config.hidden_size * config.intermediate_size) * 4 / 2**20
    old, new = previous[0]["peak_growth_mib"], streamed[0]["peak_growth_mib"]
    print(
        json.dumps(
            {
                **args,
                "parameters": total,
                "fp32_model_mib": round(model_mib, 1),
                "largest_tensor_mib": round(largest, 1),
                "previous": previous,
                "streamed": streamed,
                "rank0_peak_growth_mib_previous": old,
                "rank0_peak_growth_mib_streamed": new,
                "previous_over_model": round(old / model_mib, 2),
                "streamed_over_model": round(new / model_mib, 3),
                "ratio_streamed_over_previous": round(new / old, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
