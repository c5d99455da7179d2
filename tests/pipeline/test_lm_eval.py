"""A tiny exported Sora model scores through lm-eval's Python API on a local task, offline."""

import json
import math

import torch

from pipeline.evaluation.harness import evaluate_checkpoint
from sora import SoraConfig, SoraForCausalLM
from sora.tokenizer import save_tokenizer, train_bpe

QUESTIONS = [
    {"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 7)], "answer": 0}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4)]
]


def write_task(directory):
    data = directory / "mc.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (directory / "sora_tiny_mc.yaml").write_text(
        "task: sora_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}} Answer:'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )


def test_exported_model_scores_through_lm_eval(tmp_path):
    torch.manual_seed(0)
    tokenizer = train_bpe([q["question"] + " " + " ".join(q["choices"]) for q in QUESTIONS] * 5, vocab_size=300)
    checkpoint = tmp_path / "hf"
    model = SoraForCausalLM(SoraConfig.from_preset("tiny", vocab_size=tokenizer.get_vocab_size(), eos_token_id=0))
    model.save_pretrained(checkpoint)
    save_tokenizer(tokenizer, checkpoint)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_task(tasks)

    results = evaluate_checkpoint(checkpoint, ["sora_tiny_mc"], include_path=tasks, batch_size=4)

    scores = results["results"]["sora_tiny_mc"]
    accuracy = scores["acc,none"]
    assert 0.0 <= accuracy <= 1.0 and not math.isnan(accuracy)
    assert results["n-samples"]["sora_tiny_mc"]["effective"] == len(QUESTIONS)
