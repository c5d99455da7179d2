"""Compatibility shim, remove when nothing imports it: dataset manifests live in `pipeline.records`."""

from ..records import next_version, publish, published_versions, read_latest, read_version  # noqa: F401
from ..records.dataset import SCHEMA_VERSION  # noqa: F401
