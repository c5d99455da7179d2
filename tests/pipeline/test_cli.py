"""The `sora` console script: help, version, a subcommand, and user errors without tracebacks."""

import subprocess
import sys

from pipeline.cli import main


def test_help_and_version():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("sora ")
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout


def test_info_prints_presets(capsys):
    assert main(["info", "tiny", "--seq-len", "256"]) == 0
    line = [row for row in capsys.readouterr().out.splitlines() if row.startswith("tiny")][0]
    assert "1,377,408" in line


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["info", "13b"]) == 2
    err = capsys.readouterr().err
    assert "unknown model preset '13b'" in err and "Traceback" not in err


def test_transfer_config_is_the_default_with_longer_pretraining():
    # The README's "what pretraining buys" rows compare these two configs: only the pretraining
    # length (and the run name, so the runs stay apart) may differ.
    from pipeline.config.loader import load_config

    default, transfer = load_config("default.yaml").model_dump(), load_config("transfer.yaml").model_dump()
    assert (default["train"]["max_steps"], transfer["train"]["max_steps"]) == (200, 1000)
    assert transfer["train"]["run"] != default["train"]["run"]
    for config in (default, transfer):
        for key in ("run", "max_steps", "eval_interval", "checkpoint_interval"):
            config["train"].pop(key)
    assert transfer == default
