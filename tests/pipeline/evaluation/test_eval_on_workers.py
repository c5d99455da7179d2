"""`sora evaluate` on Ray workers: with `small`-preset checkpoints (~100M parameters, ~400 MB in
float32) the driver never builds or loads a model and its memory stays flat; the scratch baseline is
built in its task; stored results are reused without starting a task; a task's UserError reaches
the caller as itself."""

import threading

import psutil
import pytest

from pipeline.config.evaluate import EvalConfig
from pipeline.errors import UserError
from pipeline.evaluation import workers
from pipeline.evaluation.checkpoints import evaluate_run
from pipeline.evaluation.workers import EvalJob, evaluate_on_workers, scratch_language_model
from pipeline.records import ExportInfo
from sora import SoraConfig, SoraForCausalLM, SoraForSequenceClassification, count_parameters

pytestmark = pytest.mark.distributed  # a Ray local cluster


@pytest.fixture(scope="module")
def ray_up():
    import ray

    from pipeline.config.run import RayConfig
    from pipeline.ray_runtime import ensure_ray

    started = not ray.is_initialized()
    ensure_ray(RayConfig(num_cpus=2))
    yield
    if started:
        ray.shutdown()


class PeakRss:
    """The largest RSS growth of this process while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        self.process, self.stop = psutil.Process(), threading.Event()
        self.base = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.growth = self.peak - self.base


def refuse(what: str):
    def refused(*_, **__):
        raise AssertionError(what)

    return refused


def test_the_driver_never_holds_the_model(small_dataset, ray_up, monkeypatch):
    import ray

    config, store, manifest, _ = small_dataset
    block = manifest.tokenizer
    hf_config = SoraConfig.from_preset(
        "small", vocab_size=block.vocab_size, eos_token_id=block.eos_id, pad_token_id=block.pad_id
    ).to_dict()
    fp32_bytes = 4 * count_parameters(SoraConfig.from_dict(hf_config))["total"]
    assert fp32_bytes > 350e6
    # The "pretrained" export: a random `small` model built in a task too (run "small-scratch-init").
    info = ExportInfo(step=0, dataset=manifest.dataset, dataset_version=manifest.version, run="small")
    ray.get(ray.remote(scratch_language_model).remote(store, "small", hf_config, info, manifest, 1))
    config = config.model_copy(deep=True)
    config.train.run, config.eval.limit = "small-scratch-init", 2
    for model_class in (SoraForCausalLM, SoraForSequenceClassification):
        monkeypatch.setattr(model_class, "__init__", refuse("a model was built in the driver"))

    with PeakRss() as rss:
        outcome = evaluate_run(config)

    assert outcome["ft-full-pretrained"] == outcome["ft-full-scratch"] == "missing"
    for name in ("pretrained", "scratch"):
        assert {"sora_heldout_ppl", "sora_cloze"} <= set(outcome[name].results)
        assert outcome[name].n_samples["sora_cloze"]["effective"] == 2
    assert outcome["scratch"].lineage.checkpoint_uri == store.uri("runs/small-scratch-init-scratch-init/hf")
    scratch_info = ExportInfo.load(store, "small-scratch-init-scratch-init")
    assert scratch_info.initialized_like == "small-scratch-init" and scratch_info.init_dtype == "float32"
    print(f"driver RSS growth {rss.growth / 2**20:.1f} MiB, model {fp32_bytes / 2**20:.0f} MiB in float32")
    assert rss.growth < 0.25 * fp32_bytes

    # Stored results are the commit marker: a rerun reads them and starts no task.
    monkeypatch.setattr("pipeline.evaluation.checkpoints.evaluate_on_workers", refuse("a task was started"))
    assert evaluate_run(config) == outcome

    # A UserError raised in a task arrives as itself, with its own one-line message.
    job = EvalJob("bad", store.uri("runs/nothing/hf"), "causal_lm", {"dataset": manifest.dataset})
    with pytest.raises(UserError, match=r"^checkpoint \S+/runs/nothing/hf is missing: nothing under") as error:
        evaluate_on_workers(config, store, config.train.run, manifest, [job])
    assert type(error.value) is UserError and "\n" not in str(error.value)
    # eval.device against the cluster's GPUs: cuda without one fails before any work.
    with pytest.raises(UserError, match="eval.device is cuda, but the Ray cluster has no GPUs"):
        workers.use_gpu(EvalConfig(device="cuda"))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    assert workers.use_gpu(EvalConfig()) and not workers.use_gpu(EvalConfig(device="cpu"))
