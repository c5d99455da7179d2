"""Recovery time after an external SIGKILL of one training worker, with its breakdown.

A small pretrain run (tiny model, 2 CPU workers, gloo) runs in this process. Once rank 0 has
logged step `--kill-after`, the script sends SIGKILL to the Ray Train worker process of rank
`--kill-rank` (one of this process's descendants); with `--kills N` it does so again each time the
restarted group gets back to that step. Recovery time: from the kill to the `time` of the first
metrics row written after it (the first step of the restarted worker group). Each gap is split into
phases from
  - the Ray Train controller's log (failure decision, worker group shutdown, actors created,
    train context initialized, backend set up) in this Ray session's log folder, and
  - per-worker timestamps and CPU seconds recorded by a wrapper around the job's train function
    (imports, `Trainer` construction steps, first step), one JSON file per worker process.
`worker_cpu_s` is the CPU time each new worker process used (mean over ranks) before the train
function started and until its `Trainer` was built: start-up is CPU-bound, so comparing it with
the wall time shows how much of the gap is waiting for a core.

    python bench/recovery.py --kills 2
    python bench/recovery.py --kills 2 --env RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2

Measured against a tree: run it from that tree's root with `PYTHONPATH=.` (the wrapper reports
which `pipeline` the workers imported; phases a tree does not have are reported as null).
`--profile` runs py-spy (raw collapsed stacks) on the Ray processes started after each kill.
Prints one JSON line per recovery and a summary line (mean, min, max per phase).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

# -- worker side: the train function, wrapped with phase timestamps -----------------------------


def _timed_entry(loop_config: dict):
    """Runs on each Ray Train worker: records phase timestamps, then the real train function."""
    import time as _time

    entered = _time.time()
    import json as _json
    import os as _os

    options = loop_config["bench"]
    events: list[tuple[str, float, float]] = [("entry", entered, _time.process_time())]
    try:
        import psutil

        events.insert(0, ("process_start", psutil.Process().create_time(), 0.0))
    except ImportError:
        pass

    def mark(name: str) -> None:
        events.append((name, _time.time(), _time.process_time()))

    import ray.train

    rank = ray.train.get_context().get_world_rank()
    path = _os.path.join(options["dir"], f"worker-{_os.getpid()}.json")

    def dump() -> None:
        with open(path + ".tmp", "w") as f:
            _json.dump({"pid": _os.getpid(), "rank": rank, "events": events}, f)
        _os.replace(path + ".tmp", path)

    dump()
    import torch  # noqa: F401

    mark("import_torch")
    import deepspeed

    mark("import_deepspeed")
    from pipeline.train import checkpoint_manager, engine, trainer, worker

    mark("import_pipeline")
    events.append(("pipeline_from:" + _os.path.dirname(trainer.__file__), 0.0, 0.0))

    def around(owner, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # another version of the trainer: that phase is not timed
            return
        seen = []

        def wrapped(*args, **kwargs):
            if seen:
                return original(*args, **kwargs)
            seen.append(1)
            mark(f"{label}:start")
            try:
                return original(*args, **kwargs)
            finally:
                mark(f"{label}:end")
                dump()

        setattr(owner, name, wrapped)

    around(deepspeed, "init_distributed", "init_distributed")
    around(trainer, "resolve_bf16", "resolve_bf16")
    around(trainer, "discover", "discover")  # a tree before checkpoint_manager.prepare_resume
    around(trainer, "prepare_resume", "prepare_resume")
    around(trainer, "share", "share")
    around(trainer, "Engine", "engine_build")
    around(trainer, "validation_batches", "loaders")
    around(checkpoint_manager.CheckpointManager, "restore", "checkpoint_restore")
    around(trainer, "MetricsLog", "metrics_log")
    around(trainer, "peak_flops", "peak_flops")
    around(trainer, "node_peak_flops", "peak_flops")  # a tree with the per-node cache
    around(trainer.Trainer, "__init__", "trainer_init")
    around(engine.Engine, "train_step", "first_engine_step")
    dump()
    spec = loop_config["spec"]
    if isinstance(spec, bytes):  # pickled by the driver (launch._torch_trainer)
        import pickle

        spec = pickle.loads(spec)
        mark("unpickle_spec")
    try:
        return worker.train_worker(spec)  # rank 0's outcome goes to the driver
    finally:
        mark("exit")
        dump()


# -- driver side ---------------------------------------------------------------------------------


def build_dataset(root: str):
    """The test corpus published under `root` (built once, reused by later invocations)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
    from datagen import data_config, make_corpus

    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.records import read_dataset
    from pipeline.storage import open_store

    base = Path(root)
    config = data_config(f"file://{base}/root", str(base / "corpus"))
    try:
        read_dataset(open_store(config.storage.root), config.data.name, "LATEST")
        return config
    except Exception:  # noqa: BLE001 - not published yet
        pass
    make_corpus(base / "corpus")
    preprocess(config, Reporter(quiet=True))
    return config


def run_config(data, run: str, max_steps: int, kills: int):
    from pipeline.config.run import RunConfig

    raw = data.model_dump(mode="json")
    raw["train"] = {
        "run": run,
        "model": "tiny",
        "model_overrides": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        "global_batch": 8,
        "micro_batch": 2,
        "warmup_steps": 2,
        "max_steps": max_steps,
        "eval_interval": max_steps,
        "eval_batches": 2,
        "checkpoint_interval": 4,
        "keep_last": 2,
        "log_interval": 1,  # every row reaches the store at once: the kill is timed by it
        "workers": 2,
        "max_failures": kills,
        "export": False,
    }
    return RunConfig.model_validate(raw)


def _descendants() -> list:
    import psutil

    return psutil.Process().children(recursive=True)


def _train_worker_pids() -> set[int]:
    import psutil

    found = set()
    for child in _descendants():
        try:
            if child.cmdline() and child.cmdline()[0].startswith("ray::RayTrainWorker"):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def _worker_records(bench_dir: Path) -> list[dict]:
    records = []
    for path in bench_dir.glob("worker-*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def _profile_new_workers(before: set[int], out: Path, watch_s: float = 20.0, record_s: int = 25) -> None:
    """py-spy (raw collapsed stacks, idle frames included) on each Ray worker process started
    within `watch_s` of the kill."""
    import subprocess

    import psutil

    py_spy = Path(sys.executable).with_name("py-spy")
    seen = set(before)
    deadline = time.time() + watch_s
    while time.time() < deadline:
        for child in _descendants():
            if child.pid in seen:
                continue
            try:
                command_line = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "setup_worker" in command_line:
                continue  # the runtime-env shim execs the real worker (same pid): attach after it
            if not command_line.startswith("ray::") and "default_worker.py" not in command_line:
                continue
            seen.add(child.pid)
            command = [str(py_spy), "record", "--pid", str(child.pid), "--duration", str(record_s)]
            command += ["--rate", "50", "--idle", "--format", "raw", "--output", str(out / f"pyspy-{child.pid}.txt")]
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.02)


def one_run(data, run: str, args, bench_dir: Path) -> list[dict]:
    """One pretrain run with `args.kills` kills; the breakdown of each recovery."""
    import ray

    from pipeline.keys import RunKeys
    from pipeline.pretrain.launch import pretrain
    from pipeline.storage import open_store
    from pipeline.train import launch
    from pipeline.train.metrics import read_rows

    config = run_config(data, run, args.max_steps, args.kills)
    store = open_store(config.storage.root)
    keys = RunKeys(run)
    options = {"dir": str(bench_dir)}
    original_entry, original_trainer = launch._entry, launch._torch_trainer

    driver: list[tuple[str, float]] = []  # each attempt's fit() start and end, seen by the driver

    def torch_trainer(spec, store_, use_gpu, *rest):
        driver.append(("fit_start", time.time()))
        trainer = original_trainer(spec, store_, use_gpu, *rest)
        trainer.train_loop_config["bench"] = options
        fit_attempt = trainer.fit

        def timed_fit():
            try:
                return fit_attempt()
            finally:
                driver.append(("fit_end", time.time()))

        trainer.fit = timed_fit
        return trainer

    launch._entry, launch._torch_trainer = _timed_entry, torch_trainer
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = pretrain(config, quiet=True)
        except BaseException as error:  # noqa: BLE001 - reported below
            outcome["error"] = repr(error)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    kills: list[tuple[float, int]] = []  # (time, pid)
    firsts: dict[int, dict] = {}  # kill index -> first metrics row after it (a later restart cuts it)
    try:
        while thread.is_alive():
            time.sleep(0.2)
            try:
                rows = read_rows(store, keys.metrics)
            except (FileNotFoundError, OSError, ValueError):
                continue
            for i, (killed_at, _) in enumerate(kills):
                first = next((r for r in rows if _restarted(r, killed_at)), None)
                if i not in firsts and first is not None:
                    firsts[i] = first
            if len(kills) >= args.kills or len(firsts) < len(kills):
                continue
            if not rows or rows[-1]["step"] < args.kill_after:
                continue
            live = _train_worker_pids()
            targets = [r["pid"] for r in _worker_records(bench_dir) if r["rank"] == args.kill_rank]
            targets = [pid for pid in targets if pid in live]
            if not targets:
                continue
            before = {p.pid for p in _descendants()}
            os.kill(targets[0], signal.SIGKILL)
            kills.append((time.time(), targets[0]))
            if args.profile:
                threading.Thread(target=_profile_new_workers, args=(before, bench_dir), daemon=True).start()
        thread.join()
    finally:
        launch._entry, launch._torch_trainer = original_entry, original_trainer
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    rows = read_rows(store, keys.metrics)
    for i, (killed_at, _) in enumerate(kills):
        firsts.setdefault(i, next(r for r in rows if _restarted(r, killed_at)))
    records = _worker_records(bench_dir)
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    log = _controller_log(session_dir)
    results = []
    for i, (killed_at, victim) in enumerate(kills):
        until = kills[i + 1][0] if i + 1 < len(kills) else float("inf")
        results.append(_breakdown(killed_at, until, victim, firsts[i], records, log, driver))
    return results


def _restarted(row: dict, killed_at: float) -> bool:
    """The first step of a restarted group: after the kill, and resumed (a survivor may still log
    the step it was finishing when its peer was killed)."""
    return row["time"] > killed_at and "resume_download_bytes" in row


def _controller_log(session_dir: Path) -> list[tuple[float, str]]:
    """(time, message) of every line the Train controllers of this Ray session logged."""
    found = []
    for path in sorted((session_dir / "logs" / "train").glob("ray-train-sys-controller-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                stamp, millis = record["asctime"].split(",")
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
            when = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
            found.append((when, record.get("message", "").replace("\n", " | ")[:110]))
    return sorted(found)


CONTROLLER_MARKS = {
    "detected": "[FailurePolicy]",
    "shutdown_done": "Worker group shutdown successful",
    "controller_start": "Requesting resources",  # a new controller: the driver relaunched fit()
    "group_start": "Attempting to start training worker group",
    "actors_created": "worker actors created",
    "context_initialized": "Train context initialized",
    "backend_ready": "after_worker_group_start callbacks completed",
}

PHASES = [
    ("detect (kill -> failure decision)", None, "detected"),
    ("worker group shutdown", "detected", "shutdown_done"),
    # A relaunch of fit() by the driver (trees before Ray Train retried in its controller):
    ("old controller exit -> fit() returns", "shutdown_done", "fit_end"),
    ("driver: next attempt's fit()", "fit_end", "fit_start"),
    ("new controller started", "fit_start", "controller_start"),
    ("shutdown -> new group start (total)", "shutdown_done", "group_start"),
    ("worker actors created", "group_start", "actors_created"),
    ("train context init (unpickle spec)", "actors_created", "context_initialized"),
    ("backend setup (process group)", "context_initialized", "backend_ready"),
    ("train fn launch -> entry", "backend_ready", "entry"),
    ("import deepspeed + pipeline.train", "entry", "import_pipeline"),
    ("resume point + barrier + init_distributed", "import_pipeline", "share:end"),
    ("engine build", "engine_build:start", "engine_build:end"),
    ("loaders + checkpoint restore", "engine_build:end", "checkpoint_restore:end"),
    ("metrics log + peak flops", "checkpoint_restore:end", "trainer_init:end"),
    ("first step", "trainer_init:end", "first_step_row"),
]


def _breakdown(killed_at, until, victim, first_row, records, log, driver) -> dict:
    def at(record, name, column=1):
        return next((event[column] for event in record["events"] if event[0] == name), None)

    # The restarted group's processes: their train function started after this kill.
    new = [r for r in records if killed_at <= at(r, "entry") < until]
    survivor = [r for r in records if at(r, "entry") < killed_at and r["pid"] != victim and at(r, "exit")]

    def latest(name, among):
        values = [at(r, name) for r in among if at(r, name) is not None]
        return max(values) if values else None

    marks = {"survivor_exit": latest("exit", [r for r in survivor if killed_at <= at(r, "exit") < until])}
    marks["new_process_start"] = min((at(r, "process_start") for r in new), default=None)
    for name in ("entry", "import_pipeline", "share:end", "engine_build:start", "engine_build:end"):
        marks[name] = latest(name, new)
    for name in ("checkpoint_restore:end", "trainer_init:end", "peak_flops:start", "peak_flops:end"):
        marks[name] = latest(name, new)
    marks["first_step_row"] = first_row["time"]
    window = [(when, message) for when, message in log if killed_at - 0.5 <= when < min(until, first_row["time"])]
    for name, needle in CONTROLLER_MARKS.items():
        marks[name] = next((when for when, message in window if needle in message), None)
    for name in ("fit_end", "fit_start"):  # a relaunch by the driver (Ray Train without retries)
        when = next((when for event, when in driver if event == name and killed_at <= when < until), None)
        marks[name] = when if when is not None and when < first_row["time"] else None  # not the job's end
    cpu = {}
    for label, name in (("before_train_fn", "entry"), ("until_trainer_built", "trainer_init:end")):
        values = [at(r, name, 2) for r in new if at(r, name, 2) is not None]
        cpu[label] = round(statistics.mean(values), 2) if values else None
    sources = {e[0].split(":", 1)[1] for r in new for e in r["events"] if e[0].startswith("pipeline_from:")}
    relative = {k: (round(v - killed_at, 3) if v is not None else None) for k, v in marks.items()}
    return {
        "recovery_s": round(first_row["time"] - killed_at, 3),
        "victim_rank": next((r["rank"] for r in records if r["pid"] == victim), None),
        "first_step_after": first_row["step"],
        "phases_s": _phases(relative),
        "worker_cpu_s": cpu,
        "marks_s": relative,
        "pipeline_from": sorted(sources),
        "controller": [(round(when - killed_at, 3), message) for when, message in window],
    }


def _phases(marks: dict) -> dict:
    out = {}
    for name, start, end in PHASES:
        a = 0.0 if start is None else marks.get(start)
        b = marks.get(end)
        out[name] = round(b - a, 3) if a is not None and b is not None else None
    return out


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    return {"mean": round(statistics.mean(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1, help="pretrain runs (each with --kills kills)")
    parser.add_argument("--kills", type=int, default=1, help="kills per run (the run allows as many failures)")
    parser.add_argument("--kill-rank", type=int, default=1)
    parser.add_argument("--kill-after", type=int, default=6, help="kill once rank 0 logged this step")
    parser.add_argument("--max-steps", type=int, default=9)
    parser.add_argument("--root", default=None, help="folder for the dataset (reused) and runs")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE set before Ray starts")
    parser.add_argument("--profile", action="store_true", help="py-spy the restarted workers (raw stacks)")
    args = parser.parse_args()
    for item in args.env:
        name, value = item.split("=", 1)
        os.environ[name] = value
    root = args.root or tempfile.mkdtemp(prefix="sora-recovery-")
    data = build_dataset(root)
    from pipeline.ray_runtime import ensure_ray

    ensure_ray(data.ray)
    results = []
    for rep in range(args.reps):
        bench_dir = Path(root) / f"bench-{os.getpid()}-{rep}"
        bench_dir.mkdir(parents=True)
        for kill, result in enumerate(one_run(data, f"recovery-{os.getpid()}-{rep}", args, bench_dir)):
            results.append(result)
            print(json.dumps({"rep": rep, "kill": kill, **result}), flush=True)
    summary = {"recovery_s": _spread([r["recovery_s"] for r in results])}
    for name, _, _ in PHASES:
        summary[name] = _spread([r["phases_s"][name] for r in results if r["phases_s"][name] is not None])
    for label in ("before_train_fn", "until_trainer_built"):
        values = [r["worker_cpu_s"][label] for r in results if r["worker_cpu_s"][label] is not None]
        summary[f"worker cpu {label}"] = _spread(values)
    options = {"env": args.env}
    options["pipeline_from"] = sorted({p for r in results for p in r["pipeline_from"]})
    print(json.dumps({"bench": "recovery", **options, "recoveries": len(results), "summary": summary}), flush=True)


if __name__ == "__main__":
    main()
