"""The fine-tune driver before any worker starts: a finished run stays valid when only the suites
folder moved (same train/validation files), refuses when its files changed, refuses a validation
split smaller than one validation batch, and uses the task's default max_length. No Ray: every
run here is finished or refused before training."""

import hashlib
import json

import pytest

from pipeline.config.finetune import FinetuneConfig
from pipeline.config.run import RunConfig
from pipeline.errors import UserError
from pipeline.finetune.launch import finetune_on_suite
from pipeline.finetune.suite_checks import check_validation_size, same_training_data
from pipeline.keys import RunKeys
from pipeline.records import ExportInfo, SuiteIndex
from pipeline.storage import open_store
from sora import SoraConfig

CLASSES = ["prose", "code"]
SOURCE = "base"


def rows(count: int, text: str = "snippet") -> bytes:
    return "".join(json.dumps({"text": f"{text} {i}", "label_id": i % 2}) + "\n" for i in range(count)).encode()


def publish_suites(store, folder: str, splits: dict[str, bytes], settings_id: str) -> str:
    """A suites folder as `build_suites` leaves it: the classify files and `suites.json` (sha256s)."""
    files = {f"classify/{split}.jsonl": data for split, data in splits.items()}
    for name, data in files.items():
        store.write(f"{folder}/{name}", data)
    SuiteIndex(
        format=3,
        dataset="d",
        version=1,
        heldout_docs=10,
        prefix=folder,
        uri=store.uri(folder),
        settings_id=settings_id,
        settings={},
        tag="sora_suites",
        tasks={},
        files={n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
    ).create(store)
    return f"{folder}/classify"


def publish_export(store, run: str, step: int, suite_prefix: str | None = None) -> None:
    """An export's completion marker and lineage (`finished_export`, `load_export` read these)."""
    key = RunKeys(run).export
    info = ExportInfo(step=step, dataset="d", dataset_version=1, run=run, suite_prefix=suite_prefix)
    store.write(f"{key}/sora_export.json", info.to_bytes())
    config = SoraConfig.from_preset("tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    store.write(f"{key}/config.json", json.dumps(config.to_dict()).encode())


@pytest.fixture
def driver(tmp_path):
    """(config, store, suite prefix): the pretrained export of `base` and a classify suite."""
    config = RunConfig.model_validate(
        {
            "storage": {"root": str(tmp_path / "store")},
            "train": {"run": SOURCE},
            "finetune": {"workers": 2, "global_batch": 8, "micro_batch": 2, "max_steps": 8},
        }
    )
    store = open_store(config.storage.root)
    publish_export(store, SOURCE, 12)
    old = publish_suites(store, "suites/v1/old", {"train": rows(20), "validation": rows(8, "val")}, "old")
    return config, store, old


def finish_fine_tunes(config, store, suite_prefix: str) -> None:
    """Both fine-tunes of `base` finished (last step) on the suite under `suite_prefix`."""
    for run in config.finetune.run_names(config.train).values():
        publish_export(store, run, config.finetune.max_steps, suite_prefix=suite_prefix)


def test_a_finished_fine_tune_on_the_same_files_in_a_new_suites_folder_is_skipped(driver):
    config, store, old = driver
    finish_fine_tunes(config, store, old)
    # A new format or another enabled suite: a new folder, the classify files unchanged.
    moved = publish_suites(store, "suites/v1/new", {"train": rows(20), "validation": rows(8, "val")}, "new")
    assert moved != old and same_training_data(store, old, moved)
    outcome = finetune_on_suite(config, store, moved, CLASSES, quiet=True)
    assert {init: result["skipped"] for init, result in outcome.items()} == {"pretrained": True, "scratch": True}


def test_a_finished_fine_tune_on_other_files_refuses_with_one_line(driver):
    config, store, old = driver
    finish_fine_tunes(config, store, old)
    changed = publish_suites(store, "suites/v1/other", {"train": rows(21), "validation": rows(8, "val")}, "other")
    assert not same_training_data(store, old, changed)
    with pytest.raises(UserError, match=r"^fine-tune run 'base-ft-full-pretrained' was trained on .*suites/v1/old/"):
        finetune_on_suite(config, store, changed, CLASSES, quiet=True)


def test_a_suite_without_an_index_is_compared_by_its_stored_files(tmp_path):
    store = open_store(str(tmp_path / "store"))
    for folder, train in (("a", rows(5)), ("b", rows(5)), ("c", rows(6))):
        for split, data in (("train", train), ("validation", rows(3))):
            store.write(f"hand/{folder}/classify/{split}.jsonl", data)
    assert same_training_data(store, "hand/a/classify", "hand/b/classify")
    assert not same_training_data(store, "hand/a/classify", "hand/c/classify")
    assert not same_training_data(store, "gone/classify", "hand/a/classify")  # files deleted: not provably same


def test_a_validation_split_smaller_than_one_validation_batch_refuses_before_training(driver):
    config, store, _ = driver
    small = publish_suites(store, "suites/v1/small", {"train": rows(20), "validation": rows(3, "val")}, "small")
    with pytest.raises(UserError, match=r"validation split has 3 examples, fewer than one validation batch of 2 "):
        finetune_on_suite(config, store, small, CLASSES, quiet=True)
    assert not store.list("runs/base-ft-full-pretrained")  # refused before any run was pinned or leased


def test_validation_unit_is_the_largest_over_the_worker_counts(tmp_path):
    store = open_store(str(tmp_path / "store"))
    store.write("s/code_body/validation.jsonl", rows(100))
    # 64 GPUs x micro_batch 8: one validation unit is 512 examples; the default cap of 100 yields none.
    wide = FinetuneConfig(task="generate", workers=64, global_batch=512, micro_batch=8)
    with pytest.raises(UserError, match=r"100 examples, .* 64 workers x micro_batch 8 = 512.*gen_validation_examples"):
        check_validation_size(store, "s/code_body", wide)
    # Elastic: the largest worker count decides (16 x 4 = 64 > 48 examples at 16 workers).
    store.write("s/classify/validation.jsonl", rows(48))
    elastic = FinetuneConfig(workers=[8, 16], workers_per_node=8, global_batch=64, micro_batch=4)
    with pytest.raises(UserError, match=r"16 workers x micro_batch 4 = 64.*classify_max_per_class"):
        check_validation_size(store, "s/classify", elastic)
    assert (
        check_validation_size(store, "s/code_body", FinetuneConfig(task="generate", workers=8, global_batch=64)) == 100
    )


def test_max_length_defaults_by_task():
    assert FinetuneConfig().example_length == 128
    assert FinetuneConfig(task="generate").example_length == 384
    assert FinetuneConfig(task="generate", max_length=200).example_length == 200
    with pytest.raises(ValueError):
        FinetuneConfig(max_length=4)
