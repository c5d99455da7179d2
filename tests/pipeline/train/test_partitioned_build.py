"""ZeRO-3 construction is partitioned while the model is built, and initializes like a plain build.

Two real ranks (torch processes over gloo) build the model the way the pretrain engine does; each
reports the parameter elements it holds right after construction and, gathering one parameter at
a time, the statistics of the whole weights. A plain single-process build is the reference.
"""

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.config.run import RunConfig
from pipeline.train.ds_config import deepspeed_config
from pipeline.train.engine import build_flat_model
from sora import SoraConfig, SoraForCausalLM

WORLD = 2


def _model_config(norm: str) -> SoraConfig:
    # `small`'s widths (std estimates from ~0.6M-element matrices), fewer layers to stay quick.
    return SoraConfig.from_preset("small", norm=norm, num_hidden_layers=2, vocab_size=4096)


def _stats(named) -> dict[str, list[float]]:
    return {name: [p.numel(), p.float().mean().item(), p.float().std().item()] for name, p in named}


def _build_rank(rank: int, port: int, norm: str, out: str) -> None:
    import os

    import deepspeed
    import torch.distributed as dist

    # What Ray Train sets on each worker.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    deepspeed.init_distributed(dist_backend="gloo")
    train = RunConfig.model_validate({"train": {"strategy": "zero3", "workers": WORLD}}).train
    torch.manual_seed(0)
    model, _context = build_flat_model(_model_config(norm), deepspeed_config(train, bf16=False))
    params = list(model.named_parameters())
    held = sum(p.ds_tensor.numel() for _, p in params)
    placeholders = sum(p.numel() for _, p in params)  # empty until gathered
    stats = {}
    for name, param in params:
        with deepspeed.zero.GatheredParameters([param]):
            stats.update(_stats([(name, param)]))
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"held": held, "placeholders": placeholders, "stats": stats}, f)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_ranks(norm: str, out: Path) -> None:
    """Run the ranks; one retry, on a fresh port, only when a rank was killed by a signal.

    One CI run saw a rank abort in native code ("terminate called without an active exception",
    SIGABRT, 4 s in, during the first all-gather) that did not reproduce in 32 local runs, some
    under load. A Python error in our code raises ProcessRaisedException and is never retried.
    """
    for attempt in range(2):
        try:
            mp.start_processes(_build_rank, args=(_free_port(), norm, str(out)), nprocs=WORLD, start_method="spawn")
            return
        except mp.ProcessExitedException as crash:
            if crash.signal_name is None or attempt == 1:
                raise
            print(f"rank {crash.error_index} killed by {crash.signal_name}; retrying once on a fresh port")


@pytest.mark.distributed
@pytest.mark.parametrize("norm", ["adn"])  # ADN has every init kind: normal, scaled, ones, zeros
def test_zero3_build_holds_one_share_per_rank_and_matches_plain_init(tmp_path, monkeypatch, norm):
    # Spawned ranks import this module by name (they inherit sys.path): put the repository root on it.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3]))
    _spawn_ranks(norm, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    config = _model_config(norm)
    torch.manual_seed(0)
    plain = _stats(SoraForCausalLM(config).named_parameters())
    total = sum(n for n, _, _ in plain.values())  # named_parameters lists a tied weight once

    # Each rank holds ~total/world right after construction (ZeRO pads each partition a little).
    for r in ranks:
        assert r["placeholders"] == 0
        assert abs(r["held"] - total / WORLD) <= 0.01 * total / WORLD, (r["held"], total)

    # The gathered weights have the plain build's statistics: same shapes, ones/zeros exactly,
    # random matrices with the same mean and std (within the sampling error of their size).
    gathered = ranks[0]["stats"]
    assert gathered == ranks[1]["stats"]  # every rank sees the same gathered model
    assert gathered.keys() == plain.keys()
    for name, (numel, mean, std) in plain.items():
        g_numel, g_mean, g_std = gathered[name]
        assert g_numel == numel, name
        if std == 0:
            assert g_std == 0 and g_mean == pytest.approx(mean), name  # constant init: ones or zeros
            continue
        tolerance = 5 * std / (2 * numel) ** 0.5  # five standard errors of a sample std
        assert abs(g_std - std) < tolerance, (name, g_std, std)
        assert abs(g_mean) < 5 * std / numel**0.5, (name, g_mean)
