"""What a fine-tune worker needs beyond the run config: one typed, picklable task description."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FinetuneTask:
    method: str  # full | lora
    init: str  # pretrained | scratch
    init_from: str | None  # store key of the pretrained HF export (None for scratch)
    classes: list[str]  # classify: class names, label_id indexes this list (generate: empty)
    suite_prefix: str  # store prefix of the suite fine-tuned on (train/validation/test jsonl), .../<suite>
    max_length: int
    patience: int | None
    seed: int
    lora: dict = field(default_factory=dict)  # rank, alpha, dropout, targets

    @property
    def suite(self) -> str:
        """The suite's name: the last part of its prefix (`<suites folder>/<suite>`)."""
        return self.suite_prefix.rsplit("/", 1)[-1]

    def to_dict(self) -> dict:
        return asdict(self)
