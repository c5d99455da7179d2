"""The report leads with what the run learned and ends with the config, folded in the HTML."""

from pipeline.records import StoredConfig
from pipeline.report.build import build_report
from pipeline.storage import open_store


def test_report_sections_lead_with_evaluation_and_end_with_a_folded_config(tmp_path):
    store = open_store(f"file://{tmp_path}")
    StoredConfig(config={"data": {"name": "stdlib"}, "train": {"max_steps": 3}}).write(store, "r1")
    build_report(store, "r1")
    markdown = store.read("runs/r1/report.md").decode()
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Evaluation" and headings[-1] == "## Config"
    assert headings.index("## Pretraining") < headings.index("## Data") < headings.index("## Lineage")
    html = store.read("runs/r1/report.html").decode()
    assert "<details><summary>the run's full config</summary>" in html
    assert html.index("<h2>Evaluation</h2>") < html.index("<details>")
