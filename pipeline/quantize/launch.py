"""`sora quantize`, the driver: every check that needs no model first, then one Ray task does the work.

The driver reads records only (the source export's `config.json` and lineage, the methods' records);
the models are loaded in the task (`task.py`), on a worker with a GPU when `quantize.device` asks for
one (auto: when the Ray cluster has one), else on CPUs with all of the node's cores. Methods whose
`quantize.json` exists are done and skipped: running it again does no work.
"""

from __future__ import annotations

import importlib.util

from ..config.run import RunConfig
from ..errors import UserError
from ..ray_runtime import ensure_ray, get_result
from ..records.export import load_export
from ..storage import ObjectStore, open_store
from .methods import check_methods
from .record import QuantizeRecord


def quantize(config: RunConfig) -> dict[str, QuantizeRecord]:
    """Quantize the run's export with every `quantize.methods` (those not done yet); {method: record}."""
    import ray

    settings = config.quantize
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    source_run = settings.source_run(config.train)
    load_export(store, source_run)  # a clear error when there is no complete export
    done = {method: QuantizeRecord.load(store, settings.run_name(source_run, method)) for method in settings.methods}
    todo = [method for method, record in done.items() if record is None]
    if not todo:
        return done
    device = check_quantize(config, todo)
    options = {"num_gpus": 1, "num_cpus": 1, "max_calls": 1} if device == "cuda" else {"num_cpus": 1}
    task = ray.remote(_quantize_task).options(name=f"sora-quantize-{source_run}", **options)
    done |= get_result(task.remote(config, source_run, todo, device))
    return done


def check_quantize(config: RunConfig, methods: list[str] | None = None) -> str:
    """The device quantization runs on; a one-line UserError when the library or the cluster cannot
    do a method. `sora run` calls it before any training, `quantize` before its task."""
    import ray

    settings = config.quantize
    methods = settings.methods if methods is None else methods
    if importlib.util.find_spec("torchao") is None:
        raise UserError("sora quantize needs torchao: pip install 'torchao>=0.18'")
    ensure_ray(config.ray)
    gpus = ray.cluster_resources().get("GPU", 0)
    if settings.device == "cuda" and gpus < 1:
        raise UserError("quantize.device is cuda, but the Ray cluster has no GPUs: set quantize.device to auto or cpu")
    device = "cuda" if settings.device == "cuda" or (settings.device == "auto" and gpus >= 1) else "cpu"
    # Whether the GPUs do bfloat16 is asked of a worker's GPU only when int4 needs to know.
    bf16 = device == "cuda" and ("int4" not in methods or get_result(_remote_bf16().remote()))
    check_methods(methods, device, bf16)
    return device


def _quantize_task(config: RunConfig, source_run: str, methods: list[str], device: str) -> dict[str, QuantizeRecord]:
    """Task: quantize and measure with the node's cores (Ray gives a one-CPU task one thread)."""
    import os

    import torch

    from .task import quantize_export

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        store: ObjectStore = open_store(config.storage.root, config.storage.settings())
        return quantize_export(store, source_run, methods, config.quantize, device)
    finally:
        torch.set_num_threads(threads)  # Ray reuses a CPU task's process for other tasks


def _remote_bf16():
    import ray

    def gpu_bf16() -> bool:
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()

    return ray.remote(gpu_bf16).options(num_gpus=1, num_cpus=1, max_calls=1)
