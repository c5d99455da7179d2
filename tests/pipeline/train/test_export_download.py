"""`download_export` copies only a complete export (config.json listed), and never a mix of two:
an export rewritten while it downloads is fetched again once, then refused."""

import pytest
import torch

from pipeline.errors import UserError
from pipeline.records import ExportInfo
from pipeline.storage import open_store
from pipeline.train.export_download import download_export
from sora import SoraConfig, SoraForCausalLM

PREFIX = "runs/t/hf"


@pytest.fixture
def store(tmp_path):
    """A tiny model's export of run 't' (step 1)."""
    store = open_store(f"file://{tmp_path / 'store'}")
    torch.manual_seed(0)
    folder = tmp_path / "store" / PREFIX
    SoraForCausalLM(SoraConfig.from_preset("tiny")).save_pretrained(folder)
    ExportInfo(step=1, val_loss=3.0, dataset="d", dataset_version=1, run="t").write_local(folder)
    return store


def rewriting(store, monkeypatch, times: int) -> None:
    """The export's lineage is rewritten (a re-export) during the first `times` downloads."""
    download = store.download_file
    left = [times]

    def racing(key, path, *args):
        result = download(key, path, *args)
        if left[0] > 0 and key.endswith("sora_export.json"):
            left[0] -= 1
            step = 2 + left[0]
            store.write(key, ExportInfo(step=step, dataset="d", dataset_version=1, run="t").to_bytes())
        return result

    monkeypatch.setattr(store, "download_file", racing)


def test_an_export_without_config_json_is_refused(store, tmp_path):
    store.delete(f"{PREFIX}/config.json")
    with pytest.raises(UserError, match="incomplete"):
        download_export(store, PREFIX, tmp_path / "node", "teacher")


def test_a_rewrite_during_the_download_is_fetched_again_then_refused(store, tmp_path, monkeypatch):
    rewriting(store, monkeypatch, times=1)
    folder = download_export(store, PREFIX, tmp_path / "node", "teacher")
    assert ExportInfo.from_bytes((folder / "sora_export.json").read_bytes()).step == 2  # the new lineage
    assert (folder / ".complete").exists()
    assert [p for p in (tmp_path / "node").iterdir() if p.is_dir()] == [folder]  # the mixed copy was removed
    rewriting(store, monkeypatch, times=2)
    with pytest.raises(UserError, match="changed while it was downloaded"):
        download_export(store, PREFIX, tmp_path / "node2", "teacher")
