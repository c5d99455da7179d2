"""Configuration of the data stage (`sora preprocess`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Section

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

    @model_validator(mode="after")
    def _uri_needed(self) -> SourceConfig:
        if self.kind != "python-stdlib" and not self.uri:
            raise ValueError(f"source of kind {self.kind!r} needs a uri")
        return self


class FilterConfig(Section):
    min_chars: int = Field(default=16, ge=0, description="Drop documents shorter than this (after normalization).")
    max_chars: int = Field(default=1_000_000, gt=0, description="Drop documents longer than this.")
    max_doc_bytes: int = Field(
        default=8 << 20,
        gt=0,
        description="Quarantine raw documents/lines larger than this (oversized input, counted as 'oversized').",
    )


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
    filters: FilterConfig = Field(default_factory=FilterConfig)
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
    lease_seconds: float = Field(
        default=120,
        gt=0,
        description="Writer lease duration. A heartbeat renews it "
        "every third of that while the run is alive; a crashed run blocks the next one "
        "for at most this long.",
    )
