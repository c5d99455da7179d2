"""Fixtures for quantization tests: a tiny random Sora model stored as a run's export (no training)."""

import pytest
import torch

from pipeline.records import ExportInfo
from pipeline.storage import open_store


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """(store, run): a randomly initialized tiny SoraForCausalLM exported as run 'tiny' (fp32 safetensors)."""
    from sora import SoraConfig, SoraForCausalLM

    root = tmp_path_factory.mktemp("quantize-store")
    store = open_store(f"file://{root}")
    torch.manual_seed(0)
    model = SoraForCausalLM(SoraConfig.from_preset("tiny"))
    folder = root / "runs" / "tiny" / "hf"
    model.save_pretrained(folder)
    ExportInfo(step=1, dataset="synthetic", dataset_version=1, run="tiny").write_local(folder)
    return store, "tiny"


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """(config, store): a labelled dataset and a tiny model pretrained on it for 12 steps (run 'base'),
    with `quantize` enabled (int8) and evaluation cut to the held-out perplexity suite."""
    from evalgen import labelled_config
    from traingen import train_config

    from pipeline.config.run import RunConfig
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.pretrain.launch import pretrain
    from pipeline.ray_runtime import ensure_ray

    data = labelled_config(tmp_path_factory.mktemp("quantize"))
    ensure_ray(data.ray)
    preprocess(data, Reporter(quiet=True))
    raw = train_config(data, "base", max_steps=12, checkpoint_interval=12).model_dump(mode="json")
    raw["quantize"] = {"enabled": True, "methods": ["int8"], "prompt_tokens": 16, "new_tokens": 16, "repeats": 2}
    raw["eval"]["suites"]["enabled"] = ["heldout_ppl"]
    config = RunConfig.model_validate(raw)
    pretrain(config, quiet=True)
    return config, open_store(config.storage.root)
