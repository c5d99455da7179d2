"""Run-config validation happens before Ray starts, with one clear message."""

import subprocess
import sys

import pytest
import yaml

from pipeline.config.run import RunConfig
from pipeline.train.ds_config import deepspeed_config


def test_pipeline_with_zero3_is_rejected_before_launch(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"strategy": "pipeline", "zero_stage": 3, "pipeline_stages": 2}}))
    # A fresh process, so "Ray never started" is observable (other tests share a Ray session).
    probe = (
        "import sys; from pipeline.cli import main; code = main(['pretrain', sys.argv[1]]); "
        "ray = sys.modules.get('ray'); print('ray started' if ray and ray.is_initialized() else 'no ray'); "
        "sys.exit(code)"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout.strip() == "no ray"
    assert "ZeRO-3" in out.stderr and "strategy: pipeline with zero_stage: 1" in out.stderr
    assert "strategy: zero3" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "train, message",
    [
        ({"strategy": "zero3", "pipeline_stages": 2}, "needs strategy: pipeline"),
        ({"global_batch": 10, "micro_batch": 4, "workers": 2}, "divisible by micro_batch x data-parallel"),
        (
            {"strategy": "pipeline", "pipeline_stages": 8, "workers": 8, "global_batch": 8, "micro_batch": 1},
            "exceeds the model's 4 layers",
        ),
        ({"workers": 3, "strategy": "pipeline", "pipeline_stages": 2}, "multiple of pipeline_stages"),
        ({"offload": True, "strategy": "zero1"}, "offload is supported with strategy zero3 only"),
        ({"bogus": 1}, "Extra inputs are not permitted"),
        ({"workers": [1, 3], "global_batch": 16}, r"over 3 data-parallel workers.*counts that do: \[1, 2\]"),
        ({"workers": [4, 12], "workers_per_node": 8}, r"both ends must be multiples of workers_per_node \(8\)"),
        ({"workers": [8, 24], "workers_per_node": 8, "global_batch": 32}, r"over 24 .*counts that do: \[8, 16\]"),
    ],
)
def test_invalid_combinations(train, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.model_validate({"train": train})


def test_elastic_runs_train_on_whole_nodes_with_the_same_global_batch():
    train = RunConfig.model_validate(
        {"train": {"workers": [8, 16], "workers_per_node": 8, "global_batch": 1680, "micro_batch": 4}}
    ).train  # 1680 splits over 8 and 16 workers, not over 9..15: those counts are never used
    assert train.worker_counts == [8, 16]
    assert [(s.micro_batch, s.grad_accum) for s in map(train.split, train.worker_counts)] == [(3, 70), (3, 35)]
    assert train.split(15).grad_accum == 28  # Ray placed a node with a GPU less: 1680 splits over 15
    with pytest.raises(ValueError, match="placed 13 workers, not a multiple of workers_per_node"):
        train.split(13)  # ... but not over 13: that attempt fails with this line


def test_deepspeed_auto_fields_are_filled():
    config = RunConfig.model_validate({"train": {"global_batch": 32, "micro_batch": 4, "workers": 2}}).train
    ds = deepspeed_config(config, bf16=True)
    assert ds["train_batch_size"] == 32 and ds["gradient_accumulation_steps"] == 4
    assert ds["bf16"]["enabled"] is True and ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    pipe = RunConfig.model_validate({"train": {"strategy": "pipeline", "pipeline_stages": 2}}).train
    assert deepspeed_config(pipe, bf16=False)["zero_optimization"]["stage"] == 1


def test_relative_storage_root_is_resolved_on_the_driver(tmp_path, monkeypatch):
    # Ray workers run in other working directories; they must see the driver's directory.
    monkeypatch.chdir(tmp_path)
    for root in (".sora", "file://.sora"):
        assert RunConfig.model_validate({"storage": {"root": root}}).storage.root == f"file://{tmp_path}/.sora"
    assert RunConfig.model_validate({"storage": {"root": "s3://b/p"}}).storage.root == "s3://b/p"
