"""`sora quantize`, the driver: every check that needs no model first, then one Ray task does the work.

The driver reads records only (the source export's `config.json` and lineage, the methods' records);
the models are loaded in the task (`task.py`), on a worker with a GPU when `quantize.device` asks for
one (auto: when the Ray cluster has one), else on CPUs with all of the node's cores (and host memory
for its models, `task_memory`). Methods whose `quantize.json` names the current source export and
method settings are done and skipped: running it again does no work; a stale one is redone.
"""

from __future__ import annotations

import importlib.util

from ..config.quantize import QuantizeConfig
from ..config.run import RunConfig
from ..errors import UserError
from ..keys import RunKeys
from ..ray_runtime import ensure_ray, get_result
from ..records.export import load_export
from ..storage import ObjectStore, open_store
from .benchmark import is_weight_file
from .methods import check_methods
from .record import QuantizeRecord, group_size

# Host memory of the CPU task per byte of the source export's weights (see `task_memory`).
MEMORY_PER_WEIGHT_BYTE = 2.5


def quantize(config: RunConfig) -> dict[str, QuantizeRecord]:
    """Quantize the run's export with every `quantize.methods` (those not done yet); {method: record}."""
    import ray

    settings = config.quantize
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    source_run = settings.source_run(config.train)
    done, todo = current_records(store, settings, source_run)
    if not todo:
        return done
    device = check_quantize(config, todo)
    if device == "cuda":
        options = {"num_gpus": 1, "num_cpus": 1, "max_calls": 1}
    else:
        options = {"num_cpus": 1, "memory": task_memory(store, source_run)}
    task = ray.remote(_quantize_task).options(name=f"sora-quantize-{source_run}", **options)
    done |= get_result(task.remote(config, source_run, todo, device))
    return done


def current_records(
    store: ObjectStore, settings: QuantizeConfig, source_run: str
) -> tuple[dict[str, QuantizeRecord], list[str]]:
    """({method: record} of the methods still current, the methods to do): a method is done only when
    its record names the source export as it is now (URI, step, validation loss) and the same method
    settings; a re-exported source or another int4 group size makes it stale, so it is redone."""
    export_key, info, _ = load_export(store, source_run)  # a clear error when there is no complete export
    source_uri = store.uri(export_key)
    done: dict[str, QuantizeRecord] = {}
    todo: list[str] = []
    for method in settings.methods:
        record = QuantizeRecord.load(store, settings.run_name(source_run, method))
        if record is None or record.changes(source_uri, info, group_size(method, settings.int4_group_size)):
            todo.append(method)
        else:
            done[method] = record
    return done, todo


def task_memory(store: ObjectStore, source_run: str) -> int:
    """Host memory (bytes) the CPU task reserves: 2.5 x the source export's weight bytes (the
    original or a method's model loaded at the export's precision, its quantized copy and the
    reloaded one being measured), so Ray places it on a node that holds them. A one-line UserError
    when no node of the cluster has that much."""
    import ray

    export_key = RunKeys(source_run).export
    weights = sum(size for key, size in store.list_sizes(export_key).items() if is_weight_file(key.rsplit("/", 1)[-1]))
    needed = int(MEMORY_PER_WEIGHT_BYTE * weights)
    largest = max((node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"]), default=0)
    if needed > largest:
        raise UserError(
            f"quantize: run {source_run!r}'s export has {weights / 2**30:.1f} GiB of weights, the CPU task needs "
            f"{needed / 2**30:.1f} GiB of host memory and the largest Ray node offers {largest / 2**30:.1f} GiB: "
            "add a larger node or set quantize.device to cuda"
        )
    return needed


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
