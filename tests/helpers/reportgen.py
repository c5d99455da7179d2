"""A small synthetic run for report tests: stored config, pretraining metrics and lm-eval results of
the shape the evaluation stage writes (two evaluations, perplexity, multiple-choice and generation tasks)."""

import json

from pipeline.keys import RunKeys
from pipeline.records import StoredConfig
from pipeline.records.evaluation import EvalResults
from pipeline.records.metrics import encode_rows

RUN = "r1"


def _results(name: str, scale: float) -> dict:
    """lm-eval's results of one evaluation; `scale` makes the two evaluations differ."""
    return {
        "name": name,
        "kind": "causal_lm",
        "lineage": {
            "checkpoint_uri": f"file:///x/{name}",
            "run": RUN,
            "kind": "causal_lm",
            "dataset": "d",
            "dataset_version": 1,
        },
        "results": {
            "sora_heldout_ppl": {
                "alias": "sora_heldout_ppl",
                "bits_per_byte,none": 2.3 * scale,
                "bits_per_byte_stderr,none": "N/A",
                "byte_perplexity,none": 2 ** (2.3 * scale),
                "byte_perplexity_stderr,none": "N/A",
                "word_perplexity,none": 8.3e9 * scale,
                "word_perplexity_stderr,none": "N/A",
            },
            "sora_cloze": {
                "acc,none": 0.30 / scale,
                "acc_stderr,none": 0.023,
                "acc_norm,none": 0.29 / scale,
                "acc_norm_stderr,none": 0.022,
            },
            "sora_docstring": {
                "rouge_l,none": 0.21 / scale,
                "rouge_l_stderr,none": 0.01,
                "sentence_chrf,none": 31.4 / scale,
                "sentence_chrf_stderr,none": 1.2,
            },
            "my_task": {"f1,none": 0.5 / scale, "f1_stderr,none": 0.05},
        },
        "higher_is_better": {
            "sora_heldout_ppl": {"bits_per_byte": False, "byte_perplexity": False, "word_perplexity": False},
            "sora_cloze": {"acc": True, "acc_norm": True},
            "sora_docstring": {"rouge_l": True, "sentence_chrf": True},
            "my_task": {"f1": True},
        },
        "chance": {
            "sora_cloze": {"uniform": 0.25, "majority": 0.26},
            "sora_docstring": {"baselines": {"rouge_l": {"name_words": 0.12, "most_frequent_line": 0.05}}},
        },
    }


def synthetic_run(store, config_lines: int = 150, extra: dict[str, float] | None = None) -> str:
    """Store a run `r1` with a long config, 40 steps of metrics and two evaluations (plus `extra`
    {name: scale}, e.g. a distilled student); returns its name."""
    config = {"train": {f"option_{i:03d}": i for i in range(config_lines)}}
    StoredConfig(config=config).write(store, RUN)
    rates = {s: 9000.0 + 50 * (s % 7) for s in range(1, 41)}
    rows = [
        {"step": s, "loss": 8 - s / 10, "tokens": s * 4096, "tokens_per_s": rate, "mfu": rate * 5e-5}
        | ({"val_loss": 8.2 - s / 10} if s % 10 == 0 else {})
        for s, rate in rates.items()
    ]
    store.write(f"{RunKeys(RUN).metrics}/00000.jsonl", encode_rows(rows))
    for name, scale in {"pretrained": 1.0, "scratch": 1.5, **(extra or {})}.items():
        store.write(EvalResults.key(RUN, name), json.dumps(_results(name, scale)).encode())
    return RUN
