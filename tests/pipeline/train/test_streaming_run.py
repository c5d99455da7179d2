"""Streaming in real training runs (Ray Train + DeepSpeed, 2 CPU workers): a mixture whose split is
more than 10x the node cache limit trains to the end through a killed worker and a resume on
another worker count, the cache never over its limit; a changed mixture is refused; a dataset
that runs out stops the run where configured."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from streamgen import SEQ_LEN, publish_synthetic
from traingen import train_config

from pipeline.config.run import RunConfig
from pipeline.errors import UserError
from pipeline.keys import RunKeys
from pipeline.pretrain.launch import pretrain
from pipeline.records import ExportInfo, RunPin
from pipeline.storage import open_store
from pipeline.train.loader import cache_directory
from pipeline.train.metrics import read_rows
from pipeline.train.sample_sequence import SampleSequence
from pipeline.train.shard_cache import ShardCache

pytestmark = [pytest.mark.distributed]

STEPS, BATCH, WINDOW, PREFETCH = 40, 32, 2, 1


@pytest.fixture(scope="module")
def mixture_root(tmp_path_factory):
    """web: 90 shards x 16 rows, code: 20 shards x 16 rows (one tokenizer)."""
    root = tmp_path_factory.mktemp("mixture") / "store"
    store = open_store(f"file://{root}")
    return store, publish_synthetic(store, "web", 90, 16), publish_synthetic(store, "code", 20, 16)


def mixture_config(store, run: str, weights=(0.7, 0.3), **train) -> RunConfig:
    data = RunConfig.model_validate({"storage": {"root": store.root_uri}, "ray": {"num_cpus": 2}})
    mixture = [{"dataset": "web", "weight": weights[0]}, {"dataset": "code", "weight": weights[1]}]
    values = {"global_batch": BATCH, "micro_batch": 4, "max_steps": STEPS, "checkpoint_interval": 10,
              "eval_interval": 20, "shuffle_window": WINDOW, "prefetch": PREFETCH, "data": mixture}  # fmt: skip
    values.update(train)
    return train_config(data, run, **values)


class CachePoller:
    """Polls the node's shard cache (bytes on disk) every few milliseconds while a run trains."""

    def __init__(self, directory, limit: int) -> None:
        self.cache, self.peak, self.samples = ShardCache(directory, limit), 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, self.cache.usage())
            self.samples += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_a_mixture_ten_times_the_cache_trains_through_a_kill_and_a_resize(
    mixture_root, ray_session, tmp_path, monkeypatch
):
    store, web, code = mixture_root
    shard = max(e.bytes for m in (web, code) for e in m.split("train"))
    limit = 2 * (2 * WINDOW + PREFETCH) * shard  # the least a 2-dataset mixture may have
    split = sum(e.bytes for m in (web, code) for e in m.split("train"))
    assert split >= 10 * limit
    directory = cache_directory() / "shards"  # the workers' (same environment as this process)
    shutil.rmtree(directory, ignore_errors=True)
    monkeypatch.setenv("SORA_KILL_WORKER", "1:17")  # mid-window, 7 steps after the checkpoint of step 10
    monkeypatch.setenv("SORA_FAULT_DIR", str(tmp_path / "faults"))
    options = {"record_sample_ids": True, "cache_limit": limit}
    config = mixture_config(store, "mix", max_failures=2, stop_after_steps=25, **options)
    with CachePoller(directory, limit) as poller:
        pretrain(config, quiet=True)
        assert (tmp_path / "faults" / "killed-1-17").exists()  # the fault fired
        monkeypatch.delenv("SORA_KILL_WORKER")
        resized = mixture_config(store, "mix", workers=1, micro_batch=8, **options)
        pretrain(resized, quiet=True)
    assert 0 < poller.peak <= limit, (poller.peak, limit)
    assert poller.samples > 100

    keys = RunKeys("mix")
    recorded = read_rows(store, keys.samples)
    assert [r["step"] for r in recorded] == list(range(1, STEPS + 1))  # every step once
    sequence = SampleSequence([(web, 0.7), (code, 0.3)], config.train.seed, WINDOW)
    ids = np.asarray([i for r in recorded for i in r["ids"]])
    assert np.array_equal(ids, sequence.ids(0, STEPS * BATCH))  # the exact global order through both faults
    source, shards, _ = sequence.locate(ids)
    assert abs(np.mean(source == 0) - 0.7) < 0.01
    read = len(set(zip(source.tolist(), shards.tolist(), strict=True)))
    assert read * shard > 5 * limit  # the run read well past what the cache holds: it evicted

    rows = read_rows(store, keys.metrics)
    assert rows[-1]["workers"] == 1
    drawn = sequence.progress(STEPS * BATCH)["datasets"]
    assert rows[-1]["tokens_by_dataset"] == {name: d["samples"] * SEQ_LEN for name, d in drawn.items()}
    assert rows[-1]["epochs_by_dataset"] == {"web": 0, "code": 1}  # code (30 % of 1280 > 320) repeats

    pinned, _ = RunPin.load(store, "mix")
    assert [(p.dataset, p.dataset_version, p.weight) for p in pinned.data] == [("web", 1, 0.7), ("code", 1, 0.3)]
    info = ExportInfo.load(store, "mix")
    assert [(p.dataset, p.weight) for p in info.data] == [("web", 0.7), ("code", 0.3)]

    changed = mixture_config(store, "mix", weights=(0.5, 0.5), max_steps=STEPS + 10)
    with pytest.raises(UserError, match=r"launched on the mixture \[web v1 x 0.7, code v1 x 0.3\].*new run name"):
        pretrain(changed, quiet=True)
    rewindowed = mixture_config(store, "mix", max_steps=STEPS + 10, shuffle_window=4)
    with pytest.raises(UserError, match="shuffle_window 2.*shuffle_window 4: that changes the sample order"):
        pretrain(rewindowed, quiet=True)


def test_a_dataset_that_runs_out_stops_the_run_when_asked(mixture_root, ray_session):
    store, web, code = mixture_root
    config = mixture_config(store, "until-code-ends", on_exhausted="stop", max_steps=100, checkpoint_interval=50)
    first, _ = SampleSequence([(web, 0.7), (code, 0.3)], config.train.seed, WINDOW).first_repeat()
    result = pretrain(config, quiet=True)
    assert result["final"]["step"] == first // BATCH < 100
    assert result["final"]["data_exhausted"].startswith("code ran out after 320 samples")
    assert ExportInfo.load(store, "until-code-ends").data_exhausted  # exported where it stopped
    assert pretrain(config, quiet=True)["skipped"]  # and a rerun has nothing left to do
