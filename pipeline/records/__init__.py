"""Typed records of every JSON document Sora stores (DESIGN.md s.3).

Each record owns its storage key (built from `pipeline.keys`) and its load/save with the write
contract the document needs: create-if-absent (manifests, run pins, suites indexes, eval results),
compare-and-swap (`LATEST`, `run.json` lineage) or a plain write under a fence the caller holds
(`COMMITTED`, trainer state, timings). Outside this package no code parses these documents or
indexes them by string key (tests/pipeline/test_records.py enforces it).
"""

from .checkpoint import (
    COMMITTED,
    CONVERTED,
    STATE,
    Committed,
    CommittedFile,
    Converted,
    EarlyStoppingState,
    RankUpload,
    TrainerState,
    WarmStartPin,
)
from .dataset import (
    SPLITS,
    BuildStats,
    DatasetVersion,
    LatestPointer,
    Manifest,
    ManifestStats,
    ShardEntry,
    SourceEntry,
    TokenizerInfo,
    is_published,
    next_version,
    publish,
    published_chain,
    published_versions,
    read_dataset,
    read_latest,
    read_version,
)
from .evaluation import Chance, EvalLineage, EvalResults, EvalSuites, SuiteFile, SuiteIndex, SuiteTask
from .export import ExportInfo
from .metrics import MetricsRow, last_row, read_rows
from .run import AttemptLog, PinnedSource, RunPin, SampleOrderPin, StageTiming, StoredConfig, WarmStartLineage
from .source_index import read_source_index, source_entries, unindexed, write_source_index

__all__ = [
    "AttemptLog",
    "COMMITTED",
    "CONVERTED",
    "SPLITS",
    "STATE",
    "BuildStats",
    "Chance",
    "Committed",
    "Converted",
    "RankUpload",
    "DatasetVersion",
    "CommittedFile",
    "EarlyStoppingState",
    "EvalLineage",
    "EvalResults",
    "EvalSuites",
    "ExportInfo",
    "LatestPointer",
    "Manifest",
    "ManifestStats",
    "MetricsRow",
    "PinnedSource",
    "RunPin",
    "SampleOrderPin",
    "ShardEntry",
    "SourceEntry",
    "StageTiming",
    "TrainerState",
    "StoredConfig",
    "SuiteFile",
    "SuiteIndex",
    "SuiteTask",
    "TokenizerInfo",
    "WarmStartLineage",
    "WarmStartPin",
    "is_published",
    "last_row",
    "next_version",
    "publish",
    "published_chain",
    "published_versions",
    "read_dataset",
    "read_latest",
    "read_rows",
    "read_source_index",
    "read_version",
    "source_entries",
    "unindexed",
    "write_source_index",
]
