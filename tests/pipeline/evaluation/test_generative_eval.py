"""The generative suites through lm-eval, offline: a tiny causal LM (SoraForCausalLM, KV cache) greedily
generates for sora_code_body / sora_docstring / sora_continuation built from real Python sources,
stops at the suites' stop sequences, is scored with the registered metrics, and the results store the
baselines; a `generator` checkpoint runs the generative suites only."""

import json
import math
import sysconfig
from pathlib import Path

import pytest
from evalgen import export_tiny, labelled_config, publish_in_process, suite_settings

from pipeline.config.run import RunConfig
from pipeline.errors import UserError
from pipeline.evaluation.stage import evaluate_checkpoint_to_store

GENERATIVE = {"sora_code_body", "sora_docstring", "sora_continuation"}


def stdlib_documents(n: int = 70) -> list[dict]:
    """The first `n` mid-sized modules of this interpreter's standard library (the default corpus)."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths if 3000 < p.stat().st_size < 30000]
    return [{"text": text} for text in texts[:n]]


def code_config(base) -> RunConfig:
    raw = labelled_config(base).model_dump(mode="json")
    raw["data"] |= {"name": "stdlib-slice", "sources": [{"kind": "python-stdlib"}]}
    raw["eval"]["suites"] = suite_settings(
        enabled=["code_body", "docstring", "continuation"],
        gen_test_examples=40,
        gen_min_test_examples=20,
        gen_train_examples=60,
        gen_validation_examples=10,
        gen_per_doc=3,
        code_body_max_tokens=24,
        docstring_max_tokens=16,
        continuation_max_tokens=24,
    )
    raw["eval"]["limit"] = 6  # documents per task: seconds on a tiny model
    return RunConfig.model_validate(raw)


@pytest.fixture(scope="module")
def code_dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("code")
    config = code_config(base)
    manifest = publish_in_process(config.storage.root, stdlib_documents(), config)
    from pipeline.storage import open_store

    return config, open_store(config.storage.root), manifest


def upload(store, directory: Path, prefix: str) -> str:
    for path in sorted(directory.iterdir()):
        store.upload_file(f"{prefix}/{path.name}", path)
    return store.uri(prefix)


def test_tiny_lm_generates_and_is_scored(code_dataset, tmp_path):
    config, store, manifest = code_dataset
    lineage = {"dataset": manifest.dataset, "dataset_version": manifest.version}
    uri = upload(store, export_tiny(tmp_path / "lm", manifest, store), "runs/gen/hf")

    results = evaluate_checkpoint_to_store(config, store, "gen", "pretrained", uri, "causal_lm", lineage)

    assert set(results.results) == GENERATIVE
    code = results.results["sora_code_body"]
    for metric, top in (("first_line_exact", 1), ("sentence_chrf", 100), ("rouge_l", 1)):
        assert 0 <= code[f"{metric},none"] <= top and math.isfinite(code[f"{metric}_stderr,none"])
    for task in ("sora_docstring", "sora_continuation"):
        assert 0 <= results.results[task]["rouge_l,none"] <= 1
    assert results.n_samples["sora_code_body"]["effective"] == 6
    baselines = results.chance["sora_docstring"].baselines["rouge_l"]
    assert set(baselines) == {"name_words", "most_frequent_line"}
    assert set(results.chance["sora_code_body"].baselines) == {"first_line_exact", "sentence_chrf", "rouge_l"}

    # Greedy generations stop at the suite's stop sequences and are scored by the registered metrics.
    configs = results.configs
    for task, limit in (("sora_code_body", 24), ("sora_docstring", 16), ("sora_continuation", 24)):
        generation = configs[task]["generation_kwargs"]
        assert generation["max_gen_toks"] == limit and generation["do_sample"] is False
        lines = store.read(f"runs/gen/eval/pretrained/samples_{task}.jsonl").splitlines()
        samples = [json.loads(line) for line in lines]
        assert len(samples) == 6
        for sample in samples:
            output = sample["filtered_resps"][0]
            assert not any(stop in output for stop in generation["until"]), (task, output)
            assert sample["target"] == sample["doc"]["answer"]
    from pipeline.suites.metrics import rouge_l

    sample = json.loads(store.read("runs/gen/eval/pretrained/samples_sora_docstring.jsonl").splitlines()[0])
    assert sample["rouge_l"] == rouge_l(sample["filtered_resps"][0], sample["target"])

    # A generator checkpoint runs the generative suites only; without any enabled, a clear error first.
    generator = evaluate_checkpoint_to_store(config, store, "gen", "generator", uri, "generator", lineage)
    assert set(generator.results) == GENERATIVE and generator.lineage.kind == "generator"
    config = config.model_copy(deep=True)
    config.eval.suites.enabled = ["heldout_ppl"]
    with pytest.raises(UserError, match=r"generator is evaluated on the generative suites: add code_body"):
        evaluate_checkpoint_to_store(config, store, "gen", "generator2", uri, "generator", lineage)
