"""The report as a browser shows it: headless Chromium renders the HTML of a small synthetic run.

Skipped where /usr/bin/chromium is not installed (Debian: `apt-get install chromium`).
"""

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from reportgen import synthetic_run

from pipeline.report.build import build_report
from pipeline.storage import open_store

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 3000
# No network, no profile of the user's, nothing that phones home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    command = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, timeout=120, check=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless check needs /usr/bin/chromium (apt-get install chromium)")
def test_report_renders_with_images_and_a_folded_config(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    run = synthetic_run(store, config_lines=150)  # unfolded, the config alone is ~3000 px tall
    build_report(store, run)
    page = tmp_path / "report.html"
    page.write_bytes(store.read(f"runs/{run}/report.html"))

    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode()
    assert "<details><summary>" in dom and "<details open" not in dom
    assert dom.count('<img src="data:image/png;base64,') == 1  # the pretraining curves, inlined

    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri())
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.size == (WIDTH, HEIGHT)
    top, bottom = image.crop((0, 0, WIDTH, HEIGHT // 2)), image.crop((0, HEIGHT // 2, WIDTH, HEIGHT))
    # The top half shows text, tables and the curves: far from a blank page.
    assert ImageStat.Stat(top).stddev[0] > 20 and top.getextrema()[0] < 50
    # The bottom half is empty page: the 150 config lines are folded away.
    assert bottom.getextrema() == (255, 255)
