"""Storage layer over URIs (`file://`, `s3://`, S3-compatible endpoints).

`open_store(uri, settings)` returns an `ObjectStore` with the operations the contracts need:
plain read/write/list, create-if-absent, compare-and-swap, and (in `lease.py`) a writer lease
with a fencing epoch.
"""

from .base import ObjectStore, StorageSettings
from .factory import open_store

__all__ = ["ObjectStore", "StorageSettings", "open_store"]
