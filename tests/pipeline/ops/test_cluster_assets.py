"""`cluster/`: every file parses, and every `sora` command in it is a real subcommand whose config validates.

Commands are parsed by the real `sora` argument parser and their configs loaded by the real loader
(with their `--set` overrides), so a renamed subcommand, option or config field fails here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.commands import COMMANDS, stage_names
from pipeline.config import load_config
from pipeline.config.loader import load_config_with_overrides

CLUSTER = Path(__file__).resolve().parents[3] / "cluster"


def strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def documents(path: Path) -> list:
    if path.suffix in (".yaml", ".yml"):
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    raise AssertionError(path)


def python_strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def sora_commands(text: str) -> list[list[str]]:
    """`sora ...` invocations in a shell text, shell/template substitutions replaced by a plain value."""
    text = re.sub(r"\$\([^)]*\)|\{\{[^}]*\}\}", "20260101", text)
    commands = []
    for segment in re.split(r"&&|\|\||;|\n(?!\s)", text):
        tokens = segment.split()
        if len(tokens) > 1 and tokens[0] == "sora":  # a bare "sora" is a name (cluster, service account, tag)
            commands.append(tokens[1:])
    return commands


def all_commands() -> dict[str, list[list[str]]]:
    found = {}
    for path in sorted(CLUSTER.rglob("*")):
        if path.suffix in (".yaml", ".yml", ".json"):
            texts = [s for doc in documents(path) for s in strings(doc)]
        elif path.suffix == ".py":
            texts = python_strings(path)
        elif path.name == "Dockerfile":
            texts = [line for line in path.read_text().splitlines() if line.startswith("RUN")]
        else:
            continue
        commands = [c for text in texts for c in sora_commands(text)]
        if commands:
            found[str(path.relative_to(CLUSTER))] = commands
    return found


def test_every_file_parses():
    parsed = 0
    for path in CLUSTER.rglob("*"):
        if path.suffix in (".yaml", ".yml", ".json"):
            assert documents(path), path
            parsed += 1
        elif path.suffix == ".py":
            ast.parse(path.read_text())  # the DAG parses without Airflow installed
            parsed += 1
    assert parsed >= 5


def test_every_command_is_a_real_subcommand_with_a_valid_config():
    found = all_commands()
    assert {"kuberay/rayjob-pretrain.yaml", "kuberay/cronjob-refresh.yaml", "airflow/sora_refresh_dag.py"} <= set(found)
    parser = build_parser()
    names = {command.name for command in COMMANDS}
    checked = 0
    for where, commands in found.items():
        for argv in commands:
            assert argv and argv[0] in names, (where, argv)
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{where}: `sora {' '.join(argv)}` does not parse")
            if hasattr(args, "config"):
                load_config_with_overrides(args.config, args.set)  # raises on a missing config or an invalid field
                checked += 1
            if getattr(args, "stage", None):
                assert args.stage in stage_names(), (where, args.stage)
    assert checked >= 5


def test_kuberay_token_auth_schedules_and_gpu_workers():
    cluster = documents(CLUSTER / "kuberay/raycluster.yaml")[0]
    job = documents(CLUSTER / "kuberay/rayjob-pretrain.yaml")[0]
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["authOptions"] == {"mode": "token"}
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        limits = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    cron = documents(CLUSTER / "kuberay/cronjob-refresh.yaml")[0]
    dag = ast.parse((CLUSTER / "airflow/sora_refresh_dag.py").read_text())
    schedule = next(n.value.value for n in ast.walk(dag) if isinstance(n, ast.Assign) and n.targets[0].id == "SCHEDULE")
    assert cron["kind"] == "CronJob" and cron["spec"]["schedule"] == schedule
    refresh = load_config("cluster-refresh.yaml")
    assert refresh.train.init_from == load_config("cluster-pretrain.yaml").train.run  # warm start from the base run
    launcher = documents(CLUSTER / "ray-cluster.yaml")[0]
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert any(t.get("resources", {}).get("GPU", 0) >= 1 for name, t in types.items() if name != "head")
    assert any("RAY_AUTH_MODE=token" in c for c in launcher["head_start_ray_commands"])
