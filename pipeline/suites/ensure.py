"""`ensure_suites`: the suites index of a dataset version, built in a Ray task when missing.

Building streams every held-out document (hours at hundreds of GB), so it never runs in a driver:
`sora run` (right after the data stage), the fine-tune driver and evaluation all start here, and
only read the index once a one-CPU task has published it.
"""

from __future__ import annotations

from ..config.run import RunConfig
from ..ray_runtime import ensure_ray, get_result
from ..records import DatasetVersion, SuiteIndex
from ..storage import ObjectStore, open_store
from .build import build_suites, read_index


def ensure_suites(config: RunConfig, store: ObjectStore, manifest: DatasetVersion) -> SuiteIndex:
    """The suites index of `manifest` for `config.eval`, built by a Ray task first when missing."""
    import ray

    index = read_index(store, manifest, config.eval)
    if index is None:
        ensure_ray(config.ray)
        task = ray.remote(_build_suites).options(name="sora-build-suites", num_cpus=1)
        get_result(task.remote(config, manifest))
        index = read_index(store, manifest, config.eval)
    if index is None:  # the task returned, so its build published the index
        raise RuntimeError(f"the suites build of {manifest.dataset} v{manifest.version} left no index to read")
    return index


def _build_suites(config: RunConfig, manifest: DatasetVersion) -> None:
    """Task: build the dataset version's suites (streaming its held-out documents)."""
    build_suites(open_store(config.storage.root, config.storage.settings()), manifest, config.eval)
