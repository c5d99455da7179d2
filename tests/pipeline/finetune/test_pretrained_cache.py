"""The node copy of a pretrained export never serves another export: two stores with the same
run name on one node, and a re-export under the same name, each get their own files."""

import json

from pipeline.finetune.objective import Classification
from pipeline.finetune.task import FinetuneTask
from pipeline.storage import open_store

EXPORT = "runs/base/hf"


def publish_export(store, step: int, weights: bytes, val_loss: float = 5.0) -> None:
    store.write(f"{EXPORT}/model.safetensors", weights)
    info = {"run": "base", "step": step, "val_loss": val_loss}
    store.write(f"{EXPORT}/sora_export.json", json.dumps(info).encode())
    store.write(f"{EXPORT}/config.json", b"{}")


def node_copy(store, node_dir) -> bytes:
    task = FinetuneTask("full", "pretrained", EXPORT, ["a", "b"], "suites/x", 16, None, 0)
    objective = Classification(task)
    objective.bind(store, node_dir)  # downloads the export: before any collective, not in build_model
    return (objective.pretrained_dir / "model.safetensors").read_bytes()


def test_same_run_name_in_two_stores_and_a_re_export_each_get_their_own_copy(tmp_path):
    node_dir = tmp_path / "node" / "checkpoints" / "base-ft-full-pretrained"  # what every worker of the node uses
    first, second = open_store(str(tmp_path / "a")), open_store(str(tmp_path / "b"))
    publish_export(first, 200, b"weights after 200 steps")
    publish_export(second, 400, b"weights after 400 steps")

    assert node_copy(first, node_dir) == b"weights after 200 steps"
    assert node_copy(second, node_dir) == b"weights after 400 steps"  # was: the first store's copy
    assert node_copy(first, node_dir) == b"weights after 200 steps"  # still cached, still right

    # `--restart` of the same run to the same step: new weights of the same size, another val loss.
    publish_export(first, 200, b"weights after 200 steps".upper(), val_loss=5.1)
    assert node_copy(first, node_dir) == b"WEIGHTS AFTER 200 STEPS"
