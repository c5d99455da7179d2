"""The eval table shows the metrics a reader can use, by one rule per metric name; results.json keeps all."""

from reportgen import synthetic_run

from pipeline.config.finetune import FinetuneConfig
from pipeline.records.evaluation import EvalResults
from pipeline.report.metrics import shown, view
from pipeline.report.tables import eval_markdown, eval_rows_for_console
from pipeline.storage import open_store


def test_perplexities_give_way_to_bits_per_byte_only_when_the_task_reports_it():
    assert not shown("word_perplexity", {"bits_per_byte", "word_perplexity"})
    assert not shown("byte_perplexity", {"bits_per_byte", "byte_perplexity"})
    assert shown("word_perplexity", {"word_perplexity"})  # a task without bits_per_byte keeps it
    assert shown("acc", {"acc", "acc_norm"}) and shown("f1", {"f1"})


def test_values_are_shown_in_the_unit_of_their_metric():
    assert view("acc").number(0.377) == "37.7" and view("acc").gain(0.035) == "+3.5 pts"
    assert view("rouge_l").number(0.21) == "21.0"
    assert view("bits_per_byte").number(0.9) == "0.900"  # below 1, yet no percentage
    assert view("sentence_chrf").number(31.4) == "31.4"
    assert view("f1").number(0.5) == "0.5" and view("f1").gain(-0.1875) == "-0.188"


def test_table_rows_follow_the_rule_and_results_json_keeps_every_metric(tmp_path):
    store = open_store(f"file://{tmp_path}")
    run = synthetic_run(store)
    rows = eval_rows_for_console(store, run, FinetuneConfig())
    header, body = rows[0], rows[1:]
    assert header[:5] == ["task", "metric", "pretrained", "scratch", "gain"]
    by_metric = {(row[0], row[1]): row for row in body}
    assert set(by_metric) == {
        ("my_task", "f1\u00a0↑"),
        ("sora_cloze", "acc\u00a0↑"),
        ("sora_cloze", "acc_norm\u00a0↑"),
        ("sora_docstring", "rouge_l\u00a0↑"),
        ("sora_docstring", "sentence_chrf\u00a0↑"),
        ("sora_heldout_ppl", "bits_per_byte\u00a0↓"),
    }
    assert by_metric[("sora_cloze", "acc\u00a0↑")][2:5] == ["30.0 ± 2.3", "20.0 ± 2.3", "+10.0 ± 3.3 pts"]
    assert by_metric[("sora_heldout_ppl", "bits_per_byte\u00a0↓")][2:5] == ["2.300", "3.450", "-1.150"]
    assert by_metric[("sora_docstring", "sentence_chrf\u00a0↑")][2] == "31.4 ± 1.2"
    markdown = eval_markdown(store, run, FinetuneConfig())
    assert "perplexity" not in markdown.split("\n\n")[0]  # the table; the note names results.json
    stored = EvalResults.load(store, run, "pretrained").results["sora_heldout_ppl"]
    assert {"word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"} <= set(stored)


def test_console_table_fits_80_columns_without_cutting_a_name_or_number(tmp_path):
    from rich.console import Console

    from pipeline.config.run import RunConfig
    from pipeline.run import print_eval_table

    store = open_store(f"file://{tmp_path}")
    run = synthetic_run(store)
    console = Console(width=80, record=True, force_terminal=False)
    print_eval_table(store, RunConfig.model_validate({"train": {"run": run}}), console)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for cells in (
        ["heldout_ppl", "bits_per_byte\u00a0↓", "2.300", "3.450", "-1.150", "-"],
        ["docstring", "sentence_chrf\u00a0↑", "31.4±1.2", "20.9±1.2", "+10.5±1.7", "-"],
        ["docstring", "rouge_l\u00a0↑", "21.0±1.0", "14.0±1.0", "+7.0±1.4", "12.0"],  # the best trivial answer
    ):
        assert any(line.split() == [c for cell in cells for c in cell.split()] for line in text.splitlines()), cells
    assert "perplexity" not in text


def test_each_comparison_gets_its_table_with_gain_stderr_and_baselines(tmp_path):
    """Distilled vs baseline, int8 vs original, generative fine-tunes: one table each, only when evaluated."""
    store = open_store(f"file://{tmp_path}")
    extra = {"distilled": 1.1, "distill-baseline": 1.2, "int8": 1.01}
    extra |= {"ft-generate-full-pretrained": 0.8, "ft-generate-full-scratch": 1.3}
    run = synthetic_run(store, extra=extra)
    markdown = eval_markdown(store, run, FinetuneConfig())
    for title in ("### Distillation", "### Quantization", "### Generative fine-tuning"):
        assert title in markdown
    distill = markdown.split("### Distillation")[1].split("###")[0]
    # cloze acc: 0.30/1.1 - 0.30/1.2 = +2.3 pts, stderr hypot(2.3, 2.3) = 3.3
    assert (
        "| sora_cloze | acc\u00a0↑ | 27.3 ± 2.3 | 25.0 ± 2.3 | 30.0 ± 2.3 | +2.3 ± 3.3 pts | 25.0 / 26.0 |" in distill
    )
    docstring = next(line for line in distill.splitlines() if line.startswith("| sora_docstring | rouge_l"))
    assert docstring.endswith("| most_frequent_line 5.0, name_words 12.0 |")  # trivial answers, scored
    generative = markdown.split("### Generative fine-tuning")[1].split("###")[0]
    assert "sora_heldout_ppl" in generative  # the synthetic generators were scored on it
    main = markdown.split("###")[0]
    assert "distilled" not in main and "int8" not in main
    plain = eval_markdown(
        open_store(f"file://{tmp_path}/plain"), synthetic_run(open_store(f"file://{tmp_path}/plain")), FinetuneConfig()
    )
    assert "###" not in plain  # nothing but pretrained and scratch evaluated: one table
