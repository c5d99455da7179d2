"""FLOPs/params accounting, and the rule that the model library stays single-device."""

import ast
from pathlib import Path

import pytest

import sora
from sora import PRESETS, SoraConfig, SoraForCausalLM, count_parameters, flops_per_token
from sora.flops import measure_cpu_matmul_peak, peak_flops


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm", "adn"])
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_matches_the_model(norm, tied):
    config = SoraConfig.from_preset("tiny", norm=norm, tie_word_embeddings=tied, num_key_value_heads=2)
    model = SoraForCausalLM(config)
    assert count_parameters(config)["total"] == sum(p.numel() for p in model.parameters())


def test_flops_formula():
    config = SoraConfig.from_preset("tiny")
    counts = count_parameters(config)
    assert counts["non_embedding"] == counts["total"]  # tied: the head is counted in place of the table
    expected = 6 * counts["non_embedding"] + 12 * config.num_hidden_layers * config.hidden_size * 256
    assert flops_per_token(config, 256) == expected


def test_presets_have_the_advertised_sizes():
    totals = {name: count_parameters(SoraConfig.from_preset(name))["total"] for name in PRESETS}
    assert 1e6 <= totals["tiny"] <= 5e6
    assert 110e6 <= totals["small"] <= 140e6
    assert 0.9e9 <= totals["1b"] <= 1.3e9
    assert 6.5e9 <= totals["7b"] <= 7.0e9


def test_cpu_peak_is_measured_and_labelled():
    assert measure_cpu_matmul_peak(size=256, seconds=0.05) > 1e8
    value, label = peak_flops("cpu")
    assert value > 0 and "measured" in label


def test_model_library_has_no_distributed_imports():
    banned = ("ray", "deepspeed", "torch.distributed")
    offenders = []
    for path in Path(sora.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if any(name == b or name.startswith(b + ".") for b in banned):
                    offenders.append(f"{path.name}: {name}")
    assert not offenders, offenders
