"""Libraries' warnings, log lines and progress bars stay off the terminal; Sora's lines and errors stay on.

Each test runs a small program in a fresh interpreter (logging and Ray are process-wide) and reads
what it wrote to its stderr (the terminal) and to its log file.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent(
    """
    import logging, sys, warnings

    from pipeline.config.run import RayConfig
    from pipeline.console_log import library_output_to_log
    from pipeline.ray_runtime import ensure_ray, get_result


    def noisy(data_file):
        # What an evaluation task prints: tqdm bars (lm-eval), datasets' split bar, a library warning.
        import datasets
        from tqdm import tqdm

        for _ in tqdm(range(3), desc="Running loglikelihood requests"):
            pass
        warnings.warn("a worker-side library warning", FutureWarning)
        return len(datasets.load_dataset("json", data_files=data_file, split="train"))


    def failing():
        raise ValueError("the task failed for a reason the user must read")


    assert "torch" not in sys.modules and "ray" not in sys.modules  # both imported while routed
    with library_output_to_log("probe") as path:
        print(f"PATH={path}", file=sys.stderr)
        import ray

        ensure_ray(RayConfig(num_cpus=1))  # Ray's token-authentication warning is logged here
        import torch  # adds its own terminal handler to the `torch` logger

        logging.getLogger("torch.utils.probe").warning("a torch log warning")
        warnings.warn("a driver-side library warning", FutureWarning)
        logging.getLogger("lm_eval.models").warning("a library log warning")
        logging.getLogger("transformers.modeling").error("a library error")
        logging.getLogger("pipeline.train.probe").warning("a sora warning")
        assert get_result(ray.remote(noisy).remote(sys.argv[1])) == 2
        get_result(ray.remote(failing).remote())
    """
)


def test_library_output_goes_to_the_log_file_and_errors_to_the_terminal(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n')
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env |= {"SORA_LOG_DIR": str(tmp_path / "logs"), "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(data)], capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path
    )
    terminal = done.stderr + done.stdout
    path = Path(next(line for line in done.stderr.splitlines() if line.startswith("PATH=")).removeprefix("PATH="))
    log = path.read_text()

    # The failing task's error reaches the terminal, and so do Sora's warnings and a library's errors.
    assert done.returncode != 0 and "the task failed for a reason the user must read" in terminal
    assert "a sora warning" in terminal and "a library error" in terminal
    # The log file's path is printed once, when it is first written.
    assert terminal.count(f"library warnings and logs: {path}") == 1
    # Libraries' warnings, log lines and progress bars are not on the terminal ...
    for line in (
        "Token authentication",
        "a driver-side library warning",
        "a library log warning",
        "a torch log warning",
        "a worker-side library warning",
        "Running loglikelihood requests",
        "Generating train split",
    ):
        assert line not in terminal, line
    # ... the driver's are in the log file, which names the Ray session folder with the workers' output.
    assert "Token authentication is enabled" in log and "a driver-side library warning" in log
    assert "a library log warning" in log and "a torch log warning" in log and "Ray workers' output" in log
    session_logs = Path(log.split("Ray workers' output (progress bars, warnings, tracebacks): ")[1].split()[0])
    workers = "".join(p.read_text(errors="replace") for p in session_logs.glob("worker-*.err"))
    assert "Running loglikelihood requests" in workers and "a worker-side library warning" in workers
    # datasets' progress bars are off everywhere (its environment switch reaches the workers).
    assert "Generating train split" not in workers


def test_an_unwritable_log_folder_falls_back_to_temp_and_never_raises_into_a_library(tmp_path, monkeypatch, capsys):
    """A read-only working directory must not turn a library's warning into an exception."""
    import logging
    import os
    import time

    from pipeline import console_log

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(console_log.LOG_DIR_ENV, str(blocked / "logs"))  # mkdir under a file fails
    monkeypatch.setattr(console_log.tempfile, "gettempdir", lambda: str(tmp_path / "temp"))
    old = tmp_path / "temp" / console_log.DEFAULT_LOG_DIR
    old.mkdir(parents=True)
    for i in range(console_log.KEEP_LOGS + 3):  # more than KEEP_LOGS: only the week-old ones go
        (old / f"old-{i}.log").write_text("x")
        os.utime(old / f"old-{i}.log", (time.time() - (8 * 86400 if i < 2 else 60),) * 2)
    with console_log.library_output_to_log("t") as _:
        logging.getLogger("somelib").warning("from a library")
    err = capsys.readouterr().err
    written = next(old.glob("t-*.log"))
    assert f"library warnings and logs: {written}" in err and "from a library" in written.read_text()
    assert not (old / "old-0.log").exists() and not (old / "old-1.log").exists()
    assert len(list(old.glob("old-*.log"))) == console_log.KEEP_LOGS + 1  # recent logs kept whatever their count
