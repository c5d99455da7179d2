"""A non-editable wheel install carries everything `sora` needs: run configs and DeepSpeed configs.

The wheel is built from a copy of the sources (nothing lands in the checkout), installed into a
fresh virtual environment whose dependencies come from this environment's site-packages (no
download), and `sora info` / `sora plan` run from another directory, where the checkout is not on
the path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.e2e


def run(*args, cwd=None) -> str:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_wheel_install_runs_info_and_plan_from_another_directory(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("sora", "pipeline"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", tmp_path / "dist", source)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("sora_pipeline-*.whl"))

    venv = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # Dependencies from this environment, appended after the fresh site-packages (a plain path line:
    # this environment's own .pth files, such as the editable install of the checkout, stay inactive).
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where, stage = run(
        python,
        "-c",
        "import pipeline.resources as r; from pipeline.config import load_config; "
        "from pipeline.train.ds_config import deepspeed_config as d; "
        "print(r.__file__); print(d(load_config('cluster-pretrain.yaml').train, True)['zero_optimization']['stage'])",
        cwd=elsewhere,
    ).split()
    assert where.startswith(str(site)), where  # the installed wheel, not the checkout
    assert stage == "3"  # a packaged run config and a packaged DeepSpeed config
    info = run(venv / "bin" / "sora", "info", "tiny", cwd=elsewhere)
    assert "1,377,408" in info
    plan = run(venv / "bin" / "sora", "plan", "default", cwd=elsewhere)
    assert "configured: zero3; recommended:" in plan and "pipeline(p=2)+zero1" in plan
