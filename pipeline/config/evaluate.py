"""Configuration of the evaluation stage (`eval:`): downstream suites and lm-eval settings.

The suites (`heldout-ppl`, `cloze`, `classify`, and the generative `code_body`, `docstring`,
`continuation`) are built from a dataset version's held-out documents (pipeline/suites/build.py);
every size below is a cap, and the builder fails with a clear message when the held-out split
cannot give `min_test_examples`. Evaluation runs in Ray tasks
on the cluster's workers (a GPU each when there are GPUs: `device`), never in the driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from .base import Section

if TYPE_CHECKING:
    from .data import SourceConfig

SuiteName = Literal["heldout_ppl", "cloze", "classify", "code_body", "docstring", "continuation"]
GENERATIVE_SUITES = ("code_body", "docstring", "continuation")  # lm-eval generate_until tasks
CODE_SUITES = ("code_body", "docstring")  # need Python functions with docstrings in the held-out split


SCORING_SUITES = ["heldout_ppl", "cloze", "classify"]  # the default for a corpus without code


class SuiteConfig(Section):
    enabled: list[SuiteName] = Field(
        default_factory=lambda: list(SCORING_SUITES),
        min_length=1,
        description="Built-in suites to build and evaluate (drop classify for a corpus without labels). Default: "
        "heldout_ppl, cloze, classify, plus the generative continuation when a data source holds code, and "
        "code_body and docstring when one holds Python (python-stdlib, or a code source whose uri names .py "
        "files); about 30 s per checkpoint for the tiny model on CPU. code_body and docstring need a code "
        "source (data.sources[].content: code).",
    )
    salt: str = Field(
        default="sora-suites",
        description="Salt of the document hashes that select and split suite documents; change it to draw others.",
    )
    min_test_examples: int = Field(
        default=400,
        ge=1,
        description="Fewest cloze examples and classify test examples accepted: enough to separate a "
        "10-point difference. Building fails (naming data.split.heldout_fraction) below it.",
    )
    ppl_max_docs: int = Field(default=40, ge=1, description="Held-out documents scored by heldout-ppl.")
    ppl_max_chars: int = Field(
        default=2000, ge=16, description="heldout-ppl scores the first this many characters of each document."
    )
    cloze_context_chars: int = Field(
        default=400, ge=16, description="Cloze context: about this many characters of whole lines."
    )
    cloze_ending_chars: int = Field(
        default=100, ge=8, description="Cloze endings (true and distractors) have exactly this many characters."
    )
    cloze_per_doc: int = Field(
        default=8, ge=1, description="Cloze examples per held-out document, at evenly spread offsets."
    )
    cloze_max_examples: int = Field(default=600, ge=1, description="Cap on cloze examples (chosen by hash).")
    classify_snippet_chars: int = Field(
        default=300, ge=16, description="Classify examples are windows of this many characters of a document."
    )
    classify_snippets_per_doc: int = Field(
        default=24, ge=1, description="Most windows (non-overlapping, evenly spread) taken from one document."
    )
    classify_max_classes: int = Field(
        default=8, ge=2, description="Keep at most this many classes (those with the most held-out documents)."
    )
    classify_min_docs_per_class: int = Field(
        default=6, ge=3, description="Drop classes with fewer held-out documents than this."
    )
    classify_validation_fraction: float = Field(
        default=0.15, gt=0, lt=1, description="Held-out documents (by hash) whose windows form classify-validation."
    )
    classify_test_fraction: float = Field(
        default=0.4, gt=0, lt=1, description="Held-out documents (by hash) whose windows form classify-test."
    )
    classify_max_per_class: int = Field(
        default=80, ge=1, description="Cap on examples per class in classify-validation and classify-test."
    )
    classify_train_max_per_class: int = Field(
        default=200, ge=1, description="Cap on examples per class in classify-train."
    )
    classify_min_snippet_chars: int = Field(
        default=64, ge=1, description="Skip windows with fewer non-blank characters than this."
    )

    gen_test_examples: int = Field(
        default=200,
        ge=1,
        description="Cap on test examples of each generative suite (code_body, docstring, continuation), chosen "
        "by hash; greedy generation is the evaluation's dearest part. Building fails below "
        "min(gen_min_test_examples, gen_test_examples).",
    )
    gen_min_test_examples: int = Field(
        default=100,
        ge=1,
        description="Fewest test examples a generative suite accepts. Its scores are means of 0-1 (or 0-100) "
        "values with a per-example spread well below a choice task's, so fewer examples than "
        "min_test_examples separate the same differences.",
    )
    gen_validation_examples: int = Field(
        default=100, ge=1, description="Cap on validation examples of each generative suite."
    )
    gen_train_examples: int = Field(
        default=2000, ge=1, description="Cap on train examples of each generative suite (for generative fine-tuning)."
    )
    gen_validation_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Held-out documents (by hash) whose examples form generative validation."
    )
    gen_test_fraction: float = Field(
        default=0.4, gt=0, lt=1, description="Held-out documents (by hash) whose examples form generative test."
    )
    gen_per_doc: int = Field(
        default=3,
        ge=1,
        description="Most generative examples of one suite taken from one document (by hash). Few: examples "
        "of one document are alike, and lm-eval's stderr assumes independent examples.",
    )
    gen_max_doc_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="code_body and docstring skip held-out documents larger than this (UTF-8 bytes): parsing "
        "is their dear part, and generated or vendored files are the largest.",
    )
    code_body_max_lines: int = Field(
        default=6, ge=1, description="code_body answers: at most this many first lines of the function body."
    )
    code_body_max_chars: int = Field(
        default=300, ge=16, description="code_body answers: at most this many characters (whole lines)."
    )
    code_body_prompt_chars: int = Field(
        default=600,
        ge=32,
        description="code_body skips functions whose prompt (decorators, signature, docstring) is longer than "
        "this, so generative fine-tuning at max_length ~256 tokens rarely truncates a prompt.",
    )
    code_body_max_tokens: int = Field(default=64, ge=1, description="Tokens generated per code_body example.")
    docstring_code_chars: int = Field(
        default=600, ge=32, description="docstring prompts: at most this many characters of the function (whole lines)."
    )
    docstring_max_chars: int = Field(
        default=120, ge=8, description="docstring answers: the docstring's first line, cut to this many characters."
    )
    docstring_max_tokens: int = Field(default=32, ge=1, description="Tokens generated per docstring example.")
    continuation_context_chars: int = Field(
        default=400, ge=16, description="continuation prompts: about this many characters of whole lines."
    )
    continuation_chars: int = Field(
        default=120, ge=8, description="continuation answers: the next this many characters, cut at a line or word end."
    )
    continuation_max_tokens: int = Field(default=48, ge=1, description="Tokens generated per continuation example.")

    @model_validator(mode="after")
    def _fractions(self) -> SuiteConfig:
        if self.classify_validation_fraction + self.classify_test_fraction >= 1:
            raise ValueError("classify_validation_fraction + classify_test_fraction must be below 1")
        if self.gen_validation_fraction + self.gen_test_fraction >= 1:
            raise ValueError("gen_validation_fraction + gen_test_fraction must be below 1")
        if self.cloze_max_examples < self.min_test_examples:
            raise ValueError(
                f"cloze_max_examples ({self.cloze_max_examples}) is below min_test_examples ({self.min_test_examples})"
            )
        return self


class EvalConfig(Section):
    suites: SuiteConfig = Field(default_factory=SuiteConfig)
    lm_classify: bool = Field(
        default=False,
        description="Also score causal LMs zero-shot on sora_classify (one request per class per example: "
        "8x the cost of the classifier's pass). Off by default: classify compares the fine-tuned classifiers.",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="Extra lm-eval task or group names (hellaswag, arc_easy, ... when their datasets are cached, "
        "or tasks from include_paths).",
    )
    include_paths: list[str] = Field(
        default_factory=list, description="Local folders of lm-eval task YAML files (user tasks)."
    )
    limit: int | None = Field(default=None, ge=1, description="Score at most this many documents per task (None: all).")
    batch_size: int = Field(default=16, ge=1, description="lm-eval batch size.")
    num_fewshot: int | None = Field(
        default=None, ge=0, description="Few-shot examples (None: each task's own default; the suites use 0)."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto",
        description="Where each checkpoint's evaluation task runs (pipeline/evaluation/workers.py): auto: on a "
        "GPU when the Ray cluster has one, else on CPUs; cuda: on a GPU (an error when the cluster has none); "
        "cpu: on CPUs. bfloat16 on a GPU that supports it, float32 otherwise.",
    )


def holds_python(source: SourceConfig) -> bool:
    """Whether the config alone tells that `source` is Python code: the stdlib corpus, or a code source
    whose uri names .py files (a jsonl or parquet source does not say what language it holds)."""
    if source.kind == "python-stdlib":
        return True
    return source.content_kind == "code" and (source.uri or "").endswith(".py")


def fit_suites_to_sources(suites: SuiteConfig, sources: list[SourceConfig]) -> None:
    """Fit `suites.enabled` to the corpus (a run config's check, before any work): left unset, it gains
    continuation on a corpus with code and code_body + docstring on one known to hold Python (on other
    code they would fail the build after its full pass); code suites on a corpus without code are a
    ValueError."""
    has_code = any(source.content_kind == "code" for source in sources)
    if "enabled" not in suites.model_fields_set:
        if has_code:
            python = any(holds_python(source) for source in sources)
            generative = [suite for suite in GENERATIVE_SUITES if python or suite not in CODE_SUITES]
            suites.enabled = [*SCORING_SUITES, *generative]
        return
    code = [suite for suite in suites.enabled if suite in CODE_SUITES]
    if code and not has_code:
        raise ValueError(
            f"eval.suites.enabled has {' and '.join(code)}, which need Python functions with docstrings, but no "
            "data source holds code: drop them, or mark the code source with data.sources[].content: code"
        )
