"""Generative fine-tuning inputs: answer-only label masks, truncation, EOS, the loss and the LoRA
export of a causal LM; and the `finetune.task` / `generate_suite` settings. One process, no Ray."""

import copy
import json

import numpy as np
import pytest
import torch

from pipeline.config.evaluate import EvalConfig
from pipeline.config.finetune import FinetuneConfig
from pipeline.config.run import RunConfig
from pipeline.errors import UserError
from pipeline.finetune.answer_examples import IGNORE, answer_is_complete, encode_examples, fit_example
from pipeline.finetune.generation import Generation
from pipeline.finetune.launch import check_suite_enabled
from pipeline.finetune.task import FinetuneTask
from pipeline.storage import open_store
from sora import SoraConfig, SoraForCausalLM
from sora.tokenizer import EOS_TOKEN, PAD_TOKEN, train_bpe

PAD, EOS, X = 0, 1, IGNORE


def test_labels_are_the_answer_tokens_shifted_and_everything_else_is_ignored():
    inputs, labels = encode_examples([[10, 11, 12], [20]], [[30, 31], [40, 41, 42]], 8, PAD, EOS)
    assert inputs.tolist() == [[10, 11, 12, 30, 31, EOS, PAD, PAD], [20, 40, 41, 42, EOS, PAD, PAD, PAD]]
    # label i is the token after input i, kept only where that token is part of the answer (EOS included)
    assert labels.tolist() == [[X, X, 30, 31, EOS, X, X, X], [40, 41, 42, EOS, X, X, X, X]]


def test_long_examples_keep_the_prompt_end_and_the_answer_start():
    prompt, answer = list(range(100, 110)), list(range(200, 210))
    # Both long: the answer keeps half the budget (its start, without EOS), the prompt its end.
    assert fit_example(prompt, answer, 8) == ([106, 107, 108, 109], [200, 201, 202, 203])
    # A short answer keeps all of itself; the prompt gets the rest.
    assert fit_example(prompt, [200, 201], 8) == ([104, 105, 106, 107, 108, 109], [200, 201])
    # A short prompt keeps all of itself; the answer gets the rest.
    assert fit_example([100, 101], answer, 8) == ([100, 101], [200, 201, 202, 203, 204, 205])
    inputs, labels = encode_examples([prompt], [answer], 8, PAD, EOS)
    assert inputs.tolist() == [[106, 107, 108, 109, 200, 201, 202, 203]]
    assert labels.tolist() == [[X, X, X, 200, 201, 202, 203, X]]  # cut answer: no EOS target


def test_without_eos_or_prompt_only_real_next_tokens_are_targets():
    inputs, labels = encode_examples([[], [5]], [[30, 31], []], 4, PAD, None)
    assert inputs.tolist() == [[30, 31, PAD, PAD], [5, PAD, PAD, PAD]]
    assert labels.tolist() == [[31, X, X, X], [X, X, X, X]]


@pytest.fixture
def suite(tmp_path):
    """A store with a BPE tokenizer, one generative split, and a manifest stand-in naming it."""
    from types import SimpleNamespace

    from pipeline.data.tokenizer_step import store_tokenizer

    store = open_store(f"file://{tmp_path}/root")
    text = "def add(a, b):\n    return a + b\n" * 40
    tokenizer = train_bpe([text], 300)
    eos, pad = tokenizer.token_to_id(EOS_TOKEN), tokenizer.token_to_id(PAD_TOKEN)
    block = store_tokenizer(store, "datasets/d", tokenizer, eos, pad)
    rows = [
        {"prompt": "def add(a, b):\n", "answer": "    return a + b\n", "doc_hash": "h1"},
        {"prompt": "def sub(a, b):\n", "answer": "    return a - b\n", "doc_hash": "h2", "complete": True},
    ]
    store.write("suites/code_body/train.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    return store, SimpleNamespace(tokenizer=block), tokenizer, rows


def task(method: str = "full") -> FinetuneTask:
    lora = {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj", "down_proj"]}
    return FinetuneTask(method, "scratch", None, [], "suites/code_body", 24, None, 0, lora)


def test_a_stored_split_is_tokenized_prompt_and_answer_apart_with_eos_after_complete_answers(suite):
    store, manifest, tokenizer, rows = suite
    examples = Generation(task()).samples(store, manifest, "train")
    assert len(examples) == 2 and examples.truncated == 0
    inputs, labels = examples.batch(np.array([1, 0]))
    # rows[1] says it is complete (EOS); rows[0] has no flag: a code_body answer is a cut body (no EOS).
    for row, ending, ids, targets in zip(
        [rows[1], rows[0]], [[manifest.tokenizer.eos_id], []], inputs.tolist(), labels.tolist(), strict=True
    ):
        prompt = tokenizer.encode(row["prompt"], add_special_tokens=False).ids
        answer = tokenizer.encode(row["answer"], add_special_tokens=False).ids + ending
        assert ids[: len(prompt) + len(answer)] == prompt + answer
        assert ids[len(prompt) + len(answer)] == manifest.tokenizer.pad_id
        assert [t for t in targets if t != IGNORE] == answer


def test_eos_follows_a_complete_answer_only():
    assert answer_is_complete({"answer": "x"}, "docstring")  # a docstring's whole first line
    assert not answer_is_complete({"answer": "x"}, "code_body")  # the first lines of a longer body
    assert not answer_is_complete({"answer": "x"}, "continuation")  # a ~120-character cut
    assert answer_is_complete({"answer": "x", "complete": True}, "code_body")  # the row's flag decides
    assert not answer_is_complete({"answer": "x", "complete": False}, "docstring")
    with pytest.raises(ValueError, match="need a `complete` field"):
        answer_is_complete({"answer": "x"}, "handmade")
    inputs, labels = encode_examples([[10], [11]], [[30], [31]], 4, PAD, EOS, complete=[False, True])
    assert inputs.tolist() == [[10, 30, PAD, PAD], [11, 31, EOS, PAD]]
    assert labels.tolist() == [[30, X, X, X], [31, EOS, X, X]]


def test_examples_longer_than_max_length_are_counted(suite):
    store, manifest, _, _ = suite
    short = FinetuneTask("full", "scratch", None, [], "suites/code_body", 6, None, 0)
    examples = Generation(short).samples(store, manifest, "train")
    assert examples.truncated == 2 and examples.input_ids.shape == (2, 6)


def tiny_causal_lm(vocab: int) -> SoraForCausalLM:
    shape = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    return SoraForCausalLM(SoraConfig.from_preset("tiny", num_hidden_layers=2, **shape))


def test_loss_and_eval_sums_count_answer_tokens_only(suite):
    store, manifest, _, _ = suite
    examples = Generation(task()).samples(store, manifest, "train")
    batch = examples.batch(np.array([0, 1]))
    model = tiny_causal_lm(300).eval()
    objective = Generation(task())
    with torch.no_grad():
        sums = objective.eval_sums(model, batch)
        logits = model(input_ids=batch[0]).logits
        answer = batch[1] != IGNORE
        expected = torch.nn.functional.cross_entropy(logits[answer], batch[1][answer], reduction="sum")
        assert int(sums[1]) == int(answer.sum())
        torch.testing.assert_close(sums[0], expected.double(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(objective.loss(model, batch), expected / answer.sum(), rtol=1e-5, atol=1e-6)
        assert 0 <= sums[2] <= sums[1]


def test_lora_export_of_a_causal_lm_is_merge_and_unload_with_the_tied_head_once():
    objective = Generation(task("lora"))
    model = objective._with_lora(tiny_causal_lm(300))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    merged = {name: source.value() for name, source in objective.export_sources(model).items()}
    skeleton_names = {name for name, _ in objective.export_skeleton(model.base_model.model.config).named_parameters()}
    assert set(merged) == skeleton_names  # lm_head is tied: the plain model lists it once, as the export does
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor.float(), reference[name].float(), rtol=0, atol=1e-6)
    base = model.base_model.model.model.layers[0].attn.q_proj.base_layer.weight
    assert not torch.equal(merged["model.layers.0.attn.q_proj.weight"], base)  # the adapters are in it


def test_task_settings_names_and_bad_input():
    assert FinetuneConfig().eval_name("scratch") == "ft-full-scratch"  # classify: names as before
    generate = FinetuneConfig(task="generate", method="lora")
    assert generate.suite == "code_body" and generate.eval_name("pretrained") == "ft-generate-lora-pretrained"
    assert generate.run_name("base", "scratch") == "base-ft-generate-lora-scratch"
    assert FinetuneConfig(task="generate", generate_suite="docstring").suite == "docstring"
    with pytest.raises(ValueError, match="generate_suite is only used with finetune.task: generate"):
        FinetuneConfig(generate_suite="continuation")


def test_a_generative_suite_that_is_not_enabled_fails_before_any_work(tmp_path):
    raw = {
        "storage": {"root": str(tmp_path / "store")},
        "finetune": {"task": "generate", "generate_suite": "docstring"},
        "eval": {"suites": {"enabled": ["heldout_ppl", "classify"]}},
    }
    # The run config refuses it (the config file's own error); the driver checks again.
    with pytest.raises(ValueError, match=r"trains on the docstring suite: add docstring to eval.suites.enabled"):
        RunConfig.model_validate(raw)
    eval_config = EvalConfig.model_validate(raw["eval"])
    with pytest.raises(UserError, match=r"needs the docstring suite: add docstring to eval.suites.enabled$"):
        check_suite_enabled(FinetuneConfig.model_validate(raw["finetune"]), eval_config)
    assert not (tmp_path / "store").exists()  # nothing opened, nothing written
