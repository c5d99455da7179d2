"""Suites the fine-tune driver needs are built in a Ray task (`ensure_suites`, shared with
evaluation), never in the driver process: at hundreds of GB of held-out text that is hours."""

import pytest

from pipeline.config.run import RunConfig
from pipeline.records import read_dataset
from pipeline.records.export import load_export
from pipeline.suites.build import read_index
from pipeline.suites.ensure import ensure_suites

pytestmark = pytest.mark.distributed


def test_missing_suites_are_built_in_a_ray_task_and_the_driver_reads_the_index(pretrained_run, monkeypatch):
    config, store = pretrained_run
    raw = config.model_dump(mode="json")
    raw["eval"]["suites"]["classify_train_max_per_class"] = 7  # settings never built: a new suites folder
    config = RunConfig.model_validate(raw)
    _, info, _ = load_export(store, config.train.run)
    manifest = read_dataset(store, info.dataset, info.dataset_version)
    assert read_index(store, manifest, config.eval) is None

    def built_in_the_driver(*_, **__):
        raise AssertionError("the driver built the suites")

    # The driver's module only: the Ray task's process imports its own, unpatched.
    monkeypatch.setattr("pipeline.suites.build.build_suites", built_in_the_driver)
    monkeypatch.setattr("pipeline.suites.ensure.build_suites", built_in_the_driver)
    index = ensure_suites(config, store, manifest)
    assert index == read_index(store, manifest, config.eval)
    classify = index.tasks["sora_classify"]
    assert classify.counts["train"] <= 7 * len(classify.classes)
    assert ensure_suites(config, store, manifest) == index  # built once: now only read
