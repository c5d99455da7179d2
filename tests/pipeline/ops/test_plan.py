"""`sora plan`: model-state memory agrees with DeepSpeed's own estimators; impossible plans are refused."""

from __future__ import annotations

import re

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.ops.plan import GIB, ModelShape, activation_bytes, balanced_partition, make_plan, plan_strategy

GPU_COUNTS = (1, 8, 64)


def cluster_config(model: str, workers: int, **train):
    overrides = {
        "train.model": model,
        "train.workers": workers,
        "train.micro_batch": 1,
        "train.global_batch": 512,
        "data.seq_len": 2048,
        "data.tokenizer.vocab_size": 32000,
        **{f"train.{k}": v for k, v in train.items()},
    }
    return load_config("default", overrides)


def deepspeed_all_cold(function, capsys, *args, **kwargs) -> dict[str, float]:
    """Run a DeepSpeed `*_all_cold` estimator and parse its table: options -> per-GPU GiB."""
    function(*args, **kwargs)
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"\s*([\d.]+)GB \|\s*([\d.]+)GB \| (.*)$", line)
        if match:
            options = re.sub(r"\s+", "", match.group(3)).replace("OffloadDeviceEnum.", "")
            rows[options] = float(match.group(2))
    return rows


@pytest.mark.parametrize("model", ["small", "1b", "7b"])
def test_model_states_agree_with_deepspeed_estimators(model, capsys):
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs,
        estimate_zero3_model_states_mem_needs_all_cold,
    )
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    deviations = {}
    for gpus in GPU_COUNTS:
        config = cluster_config(model, gpus)
        shape = ModelShape.from_config(config)
        n, largest = shape.total_params, shape.largest_module_params
        nodes, per_node = (gpus // 8, 8) if gpus >= 8 else (1, gpus)

        def ours(strategy: str, shape=shape, config=config, gpus=gpus) -> float:
            plan = plan_strategy(shape, config, strategy, gpus)
            return plan.params + plan.grads + plan.optimizer

        # Exact byte counts from the estimators' core functions...
        zero2 = estimate_zero2_model_states_mem_needs(n, per_node, nodes, cpu_offload=False)[1]
        zero3 = estimate_zero3_model_states_mem_needs(n, largest, per_node, nodes, cpu_offload=False)[1]
        offload = estimate_zero3_model_states_mem_needs(n, largest, per_node, nodes, True, True, True)[1]
        for name, theirs in (("zero2", zero2), ("zero3", zero3), ("offload", offload)):
            deviations[(name, gpus)] = abs(ours(name) - theirs) / theirs
        # ...and the tables the `_all_cold` functions print (GB there means GiB, 2 decimals).
        table2 = deepspeed_all_cold(estimate_zero2_model_states_mem_needs_all_cold, capsys, n, per_node, nodes)
        table3 = deepspeed_all_cold(estimate_zero3_model_states_mem_needs_all_cold, capsys, n, largest, per_node, nodes)
        printed = {
            "zero2": table2["offload_optimizer=none"],
            "zero3": table3["offload_param=none,offload_optimizer=none,zero_init=1"],
            "offload": table3["offload_param=cpu,offload_optimizer=cpu,zero_init=1"],
        }
        for name, theirs in printed.items():
            assert abs(ours(name) / GIB - theirs) <= max(0.05 * theirs, 0.01), (name, gpus)
    worst = max(deviations.values())
    print(f"{model}: largest deviation from DeepSpeed {worst:.2%} over {sorted(deviations)}")
    assert worst <= 0.05, deviations


def test_pipeline_bubble_and_stage_balance():
    config = cluster_config("1b", 8, strategy="pipeline", pipeline_stages=4)
    result = make_plan(config)
    pipeline = next(plan for plan in result["plans"] if plan.strategy == "pipeline")
    micro_batches = 512 // (1 * 2)  # global batch / (micro batch x data-parallel 8 / 4)
    assert pipeline.stages == 4 and pipeline.bubble == pytest.approx(3 / (micro_batches + 3))
    weights = [5, 1, 1, 1, 1, 1, 1, 5]  # embedding, blocks, head: the heaviest stage is as light as it can be
    groups = balanced_partition(weights, 3)
    assert len(groups) == 3 and max(sum(weights[i] for i in g) for g in groups) == 6
    assert [i for g in groups for i in g] == list(range(8))  # contiguous, every layer once


def test_plan_prints_every_strategy_and_a_recommendation(capsys):
    overrides = ["train.model=7b", "train.workers=8", "train.global_batch=64", "data.tokenizer.vocab_size=32000"]
    assert main(["plan", "default", *(arg for item in overrides for arg in ("--set", item))]) == 0
    out = capsys.readouterr().out
    for name in ("zero1", "zero2", "zero3", "pipeline(p=2)+zero1", "zero3+offload"):
        assert re.search(rf"^{re.escape(name)}\s", out, re.M), name
    assert "configured: zero3; recommended: zero2" in out


def test_impossible_plan_is_refused_before_anything_starts(capsys):
    code = main(["plan", "default", "--set", "train.model=7b", "--set", "train.workers=1",
                 "--set", "train.strategy=zero2", "--set", "data.tokenizer.vocab_size=32000"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "plan does not fit: zero2 needs" in err and "on 1 GPUs but a GPU has 80 GiB" in err
    assert "offload fits" in err  # what would fit on one GPU


def test_activation_checkpointing_is_planned_and_printed(capsys):
    plans = {}
    for every in (0, 1, 2):
        result = make_plan(
            cluster_config("1b", 8, strategy="pipeline", pipeline_stages=2, activation_checkpointing=every)
        )
        assert result["activation_checkpointing"] == every
        plans[every] = {plan.strategy: plan for plan in result["plans"]}
    shape = ModelShape.from_config(cluster_config("1b", 8))
    block, checkpointed, logits = activation_bytes(shape, 1, 2048)
    assert shape.layers == 22 and checkpointed < block / 10
    zero3 = {every: plans[every]["zero3"].activations for every in plans}
    assert zero3[0] == 22 * block + logits  # every block keeps its activations
    # A checkpointed block keeps its input; the backward recomputes one block at a time.
    assert zero3[1] == 22 * checkpointed + block + logits
    assert zero3[2] == 11 * checkpointed + 11 * block + block + logits  # blocks 0, 2, ..., 20
    pipeline = [plans[every]["pipeline"].activations for every in (0, 1, 2)]
    assert pipeline[1] < pipeline[2] < pipeline[0]
    for every in (1, 2):  # only activations change (a pipeline plan shows its heaviest stage, which may)
        for name, plan in plans[every].items():
            reference = plans[0][name]
            if name == "pipeline":
                continue
            assert (plan.params, plan.grads, plan.optimizer) == (reference.params, reference.grads, reference.optimizer)

    base = ["plan", "default", "--set", "train.model=1b", "--set", "data.tokenizer.vocab_size=32000"]
    assert main([*base, "--set", "train.activation_checkpointing=every_layer"]) == 0
    assert "activation checkpointing: every layer (each block keeps only its input" in capsys.readouterr().out
    assert main([*base, "--set", "train.activation_checkpointing=off"]) == 0
    assert "activation checkpointing: off" in capsys.readouterr().out
    # Too many activations: the refusal says what checkpointing would need.
    long = ["--set", "data.seq_len=2048", "--set", "train.micro_batch=32", "--set", "train.global_batch=64"]
    assert main([*base, *long]) == 2
    assert "with train.activation_checkpointing: every_layer it needs" in capsys.readouterr().err
