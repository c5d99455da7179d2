"""Compatibility shim, remove when nothing imports it: the manifest's types live in `pipeline.records`."""

from ..records import SPLITS, Manifest, ShardEntry, TokenizerInfo  # noqa: F401
