"""Dataset manifests: immutable versions `manifests/vNNNNNN.json` and the `LATEST` pointer.

A version becomes visible only when `LATEST` moves (compare-and-swap from the parent's ETag), and
only after every shard and the manifest itself exist; a crash at any earlier point leaves readers
on the previous version. Manifest files that never became LATEST (a crashed publisher) are
ignored by readers and skipped over when numbering the next version.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import UserError
from ..faults import fail_point
from ..keys import DatasetKeys
from ..storage import ObjectStore
from ..storage.lease import Heartbeat, Lease
from .manifest_types import Manifest

SCHEMA_VERSION = 1


def dataset_prefix(name: str) -> str:
    return DatasetKeys(name).prefix


def read_latest(store: ObjectStore, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, LATEST's ETag) of the newest published version, or (None, None)."""
    pointer = store.read_with_etag(f"{dataset_prefix(name)}/LATEST")
    if pointer is None:
        return None, None
    target = json.loads(pointer[0])
    return json.loads(store.read(target["manifest"])), pointer[1]


def read_version(store: ObjectStore, name: str, version: int | str = "LATEST") -> dict[str, Any]:
    """A published manifest by number, or the latest; `UserError` if there is none."""
    if version in ("LATEST", None):
        manifest, _ = read_latest(store, name)
        if manifest is None:
            raise UserError(f"dataset {name!r} has no published version under {store.root_uri}")
        return manifest
    key = f"{dataset_prefix(name)}/manifests/v{int(version):06d}.json"
    try:
        manifest = json.loads(store.read(key))
    except FileNotFoundError:
        raise UserError(f"dataset {name!r} has no version {version} ({store.uri(key)})") from None
    if int(version) not in published_versions(store, name):
        raise UserError(
            f"dataset {name!r} version {version} was never published (LATEST never pointed at it: "
            "a crashed or overtaken writer left it behind)"
        )
    return manifest


def published_versions(store: ObjectStore, name: str) -> list[int]:
    """Versions LATEST has pointed at: the parent chain from the newest manifest."""
    manifest, _ = read_latest(store, name)
    versions = []
    while manifest is not None:
        versions.append(manifest["version"])
        parent = manifest.get("parent_version")
        manifest = json.loads(store.read(f"{dataset_prefix(name)}/manifests/v{parent:06d}.json")) if parent else None
    return versions


def next_version(store: ObjectStore, name: str) -> int:
    keys = store.list(f"{dataset_prefix(name)}/manifests")
    numbers = [int(k.rpartition("/v")[2].removesuffix(".json")) for k in keys if k.endswith(".json")]
    return max(numbers, default=0) + 1


def publish(store: ObjectStore, manifest: dict[str, Any], latest_etag: str | None, lease: Lease | Heartbeat) -> str:
    """Write the manifest (create-if-absent), then move LATEST (compare-and-swap). Returns its key."""
    Manifest.from_dict(manifest)  # a malformed manifest fails here, before anything is visible
    prefix = dataset_prefix(manifest["dataset"])
    key = f"{prefix}/manifests/v{manifest['version']:06d}.json"
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    if not store.create(key, body):
        raise UserError(f"{store.uri(key)} already exists: another writer published version {manifest['version']}")
    fail_point("before_latest")
    lease.assert_held()
    pointer = json.dumps({"version": manifest["version"], "manifest": key}).encode()
    if store.swap(f"{prefix}/LATEST", pointer, latest_etag) is None:
        raise UserError(f"{store.uri(prefix + '/LATEST')} moved while this run was working; not published")
    return key
