"""Configuration of the data stage (`sora preprocess`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from .base import Section
from .filters import PRESETS, Content, FilterSpec, LengthFilter, default_filters

SourceKind = Literal["jsonl", "parquet", "text", "hf_disk", "hf_hub", "python-stdlib"]


class SourceConfig(Section):
    kind: SourceKind = Field(
        description="Reader: jsonl (.gz/.zst too), parquet, text (one file = one document), "
        "hf_disk (datasets.load_from_disk), hf_hub (datasets.load_dataset, needs network), "
        "python-stdlib (this interpreter's own .py files)."
    )
    uri: str | None = Field(
        default=None,
        description="File, directory or glob (local path, file:// or s3://); "
        "for hf_hub the dataset name. Not used by python-stdlib.",
    )
    text_field: str = Field(default="text", description="Field holding the document text (jsonl, parquet, hf).")
    label_field: str | None = Field(default=None, description="Optional field copied into the document's label.")
    split: str = Field(default="train", description="Split to read (hf_disk DatasetDict / hf_hub only).")
    weight: float = Field(
        default=1.0,
        gt=0,
        description="Mixing weight: each kept document appears floor(w) "
        "times plus once more with probability frac(w) (deterministic, by content hash).",
    )

    content: Content | None = Field(
        default=None,
        description="What the source holds, which picks the filters that apply to it (each filter's "
        "`content`): web, prose or code. Default: code for python-stdlib, prose for text, web for the rest.",
    )
    skip_filters: list[str] = Field(
        default_factory=list, description="Names of `data.filters` entries not applied to this source."
    )

    @property
    def content_kind(self) -> Content:
        if self.content is not None:
            return self.content
        return {"python-stdlib": "code", "text": "prose"}.get(self.kind, "web")

    @model_validator(mode="after")
    def _uri_needed(self) -> SourceConfig:
        if self.kind != "python-stdlib" and not self.uri:
            raise ValueError(f"source of kind {self.kind!r} needs a uri")
        return self


class DedupConfig(Section):
    exact: bool = Field(
        default=True,
        description="Remove exact duplicates (content hash), across the whole dataset "
        "including earlier published versions.",
    )
    near: bool = Field(default=True, description="Remove near duplicates (MinHash + LSH).")
    threshold: float = Field(
        default=0.8, gt=0, lt=1, description="Jaccard similarity above which two documents are near duplicates."
    )
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    shingle: int = Field(default=5, ge=1, description="Word n-gram size of MinHash shingles.")


class TokenizerConfig(Section):
    path: str | None = Field(
        default=None, description="Use this tokenizer (tokenizer.json or HF directory) instead of training one."
    )
    vocab_size: int = Field(default=4096, ge=260, description="Vocabulary size of the trained byte-level BPE.")
    sample_bytes: int = Field(
        default=8 << 20,
        gt=0,
        description="Text used to train the tokenizer: a "
        "deterministic sample of kept training documents up to this size.",
    )


class SplitConfig(Section):
    val_fraction: float = Field(default=0.02, ge=0, lt=1, description="Documents for validation, by content hash.")
    heldout_fraction: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="Documents held out (raw text, never trained on) for downstream evaluation.",
    )
    salt: str = Field(default="sora", description="Salt of the split hash; change it to draw another split.")

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.heldout_fraction >= 1:
            raise ValueError("val_fraction + heldout_fraction must be below 1")
        return self


# Ray's label syntax (Kubernetes label rules; ray/_private/label_utils.py): a key is an optional
# DNS-subdomain prefix and "/" plus a name; a selector value is `v`, `!v`, `in(a,b)` or `!in(a,b)`.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([A-Za-z0-9]([A-Za-z0-9.-]{{0,251}}[A-Za-z0-9])?/)?{_LABEL}$")
_LABEL_SELECTOR = re.compile(rf"^!?({_LABEL}|in\({_LABEL}(, ?{_LABEL})*\))$")
# Ray's predefined resources: a data task already asks for its CPU; a tiny share of these would not
# say "this kind of node".
_PREDEFINED = {"CPU", "GPU", "TPU", "memory", "object_store_memory"}


class PlacementConfig(Section):
    """Nodes the data stage's Ray tasks may run on (every task of the stage; the driver is not a task)."""

    resource: str | None = Field(
        default=None,
        description="Custom Ray resource a node must carry, e.g. 'sora_data' for nodes started with "
        "`ray start --resources='{\"sora_data\": 1}'` (cluster launcher / KubeRay: the node type's "
        "resources). Each task asks for 0.001 of it, so it never limits how many tasks run (CPUs do) and "
        "any amount >= 1 on a node works. Both autoscaler versions start a node of that type for pending tasks.",
    )
    labels: dict[str, str] | None = Field(
        default=None,
        description="Ray label selector: node label -> `value`, `!value`, `in(a,b)` or `!in(a,b)` "
        "(a `!` also matches nodes without the label). Nodes get labels from `ray start --labels=key=value` "
        "(KubeRay >= 1.5: the group's `labels`). Only autoscaler v2 starts nodes for a label selector; "
        "with v1 (used unless v2 is enabled) an autoscaled data group needs `resource`.",
    )
    wait_s: float = Field(
        default=0,
        ge=0,
        description="When no live node satisfies the placement: how long to wait for one to join (an "
        "autoscaled data group that scales from zero) before failing. 0: fail at once.",
    )

    @field_validator("resource")
    @classmethod
    def _custom_resource(cls, value: str | None) -> str | None:
        if value is not None and (value in _PREDEFINED or value.startswith("node:") or not value.strip()):
            raise ValueError(f"data.placement.resource must be a custom resource name, not {value!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _label_selector(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, selector in (value or {}).items():
            if not _LABEL_KEY.match(key):
                raise ValueError(f"data.placement.labels: {key!r} is not a valid Ray label key")
            if not _LABEL_SELECTOR.match(selector):
                raise ValueError(
                    f"data.placement.labels[{key!r}]: {selector!r} is not a label selector "
                    "(value, !value, in(a,b) or !in(a,b))"
                )
        return value

    @model_validator(mode="after")
    def _something(self) -> PlacementConfig:
        if not self.resource and not self.labels:
            raise ValueError("data.placement needs a resource or labels (leave it out for no constraint)")
        return self


class DataConfig(Section):
    name: str = Field(
        default="stdlib", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Dataset name under <root>/datasets/."
    )
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(kind="python-stdlib")],
        min_length=1,
        description="Corpora to read and mix.",
    )
    normalize: Literal["NFC", "NFKC", "none"] = Field(default="NFC", description="Unicode normalization form.")
    filters: list[FilterSpec] = Field(
        default_factory=default_filters,
        description="The filter chain, in order (pipeline/config/filters.py): each entry has a `type` "
        "(length, gopher_quality, gopher_repetition, c4, fineweb, language, pii, decontaminate) and its "
        "settings. Default: length, then PII redaction (web sources). A name instead of a list picks a "
        "preset: `default`, or `fineweb` (FineWeb's chain: language en >= 0.65, Gopher repetition and "
        "quality, C4 without its line-punctuation rule, FineWeb's rules, PII, decontamination). The earlier "
        "mapping form ({min_chars, max_chars, max_doc_bytes}) is read as a length filter alone.",
    )
    word_tokenizer: Literal["fast", "spacy"] = Field(
        default="fast",
        description="How the quality heuristics split words: fast (a Unicode regex: word runs and "
        "punctuation runs) or spacy (spaCy's blank-model tokenizer, as datatrove does; pip install spacy).",
    )
    max_doc_bytes: int = Field(
        default=8 << 20,
        gt=0,
        description="Quarantine raw documents/lines larger than this (oversized input, counted as 'oversized').",
    )
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    seq_len: int = Field(default=256, ge=8, description="Tokens per training sample; blocks hold seq_len + 1.")
    shard_bytes: int = Field(default=128 << 20, ge=1 << 16, description="Target size of one Arrow shard.")
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Fail (publishing nothing) when a source file has more than this fraction of malformed records.",
    )
    read_blocks: int | None = Field(
        default=None,
        ge=1,
        description="Read tasks (blocks) the input is split into: many small files per task, large "
        "jsonl/parquet files split into byte ranges / row groups. Default: 3 per CPU of the Ray "
        "cluster (pieces of at most 64 MB). Does not change the output.",
    )
    read_block_bytes: ByteSize = Field(
        default=ByteSize(64 << 20),
        ge=1 << 16,
        description="Most input bytes (raw lines / rows) in one block of records a read task hands out: "
        "a compressed file, a whole parquet file or an HF dataset is read as a stream and handed out "
        "in blocks of this size, so no task holds a whole file (e.g. 64MiB). Does not change the output.",
    )
    shuffle_partition_bytes: ByteSize = Field(
        default=ByteSize(256 << 20),
        ge=1 << 20,
        description="Target size of one shuffle partition (dedup key rows, tokenized rows): a reduce task "
        "holds one, so this bounds its memory whatever the corpus size; more partitions mean more "
        "ranged reads (two per map file per partition). Does not change the output.",
    )
    task_memory: ByteSize = Field(
        default=ByteSize(1 << 30),
        ge=0,
        description="Memory each read task asks Ray for (Ray's `memory` resource, e.g. 1GiB): Ray runs no "
        "more read tasks on a node than its memory holds. A task holds one block of records "
        "(`read_block_bytes`) and the cleaning copies of a few MB at a time, whatever the file sizes: "
        "measured 2x the block for long documents, ~16x for 450-byte ones (their per-record "
        "overhead: 1 GB for a 64 MiB block); lower `read_block_bytes` for corpora of short "
        "documents. 0: no request.",
    )
    lease_seconds: float = Field(
        default=120,
        gt=0,
        description="Writer lease duration. A heartbeat renews it "
        "every third of that while the run is alive; a crashed run blocks the next one "
        "for at most this long.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_filters(cls, raw):
        """`filters: {min_chars, max_chars, max_doc_bytes}` (before the chain) -> a length filter."""
        if isinstance(raw, dict) and isinstance(raw.get("filters"), dict):
            raw = dict(raw)
            legacy = dict(raw.pop("filters"))
            if "max_doc_bytes" in legacy:
                raw.setdefault("max_doc_bytes", legacy.pop("max_doc_bytes"))
            raw["filters"] = [{"type": "length", **legacy}]
        if isinstance(raw, dict) and isinstance(raw.get("filters"), str):
            if raw["filters"] not in PRESETS:
                raise ValueError(f"data.filters: no preset {raw['filters']!r} (presets: {', '.join(PRESETS)})")
            raw = {**raw, "filters": PRESETS[raw["filters"]]}
        return raw

    @model_validator(mode="after")
    def _filter_names(self) -> DataConfig:
        names = [f.label for f in self.filters]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"data.filters: names {twice} are used twice; give each filter its own `name`")
        if sum(f.type == "decontaminate" for f in self.filters) > 1:
            raise ValueError("data.filters: at most one decontaminate filter")
        for i, source in enumerate(self.sources):
            unknown = sorted(set(source.skip_filters) - set(names))
            if unknown:
                raise ValueError(f"data.sources[{i}].skip_filters: {unknown} name no filter of data.filters ({names})")
        return self

    def length_filter(self) -> LengthFilter | None:
        return next((f for f in self.filters if isinstance(f, LengthFilter)), None)

    placement: PlacementConfig | None = Field(
        default=None,
        description="Confine the data stage's tasks to nodes with a Ray resource or labels (e.g. a CPU "
        "group for data, so a refresh does not compete with training on the GPU nodes). Default: "
        "any node.",
    )
