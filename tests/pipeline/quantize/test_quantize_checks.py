"""What quantization refuses before any work: unknown methods, int4 where torchao cannot do it."""

import pytest

from pipeline.config.loader import load_config
from pipeline.errors import UserError
from pipeline.quantize.methods import check_methods, device_problem, torchao_config


def test_unknown_method_is_a_config_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("quantize:\n  methods: [int3]\n")
    with pytest.raises(UserError, match="quantize.methods"):
        load_config(config)
    with pytest.raises(UserError, match="unknown quantization method 'int3'"):
        torchao_config("int3", 128)


def test_repeated_method_is_a_config_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("quantize:\n  methods: [int8, int8]\n")
    with pytest.raises(UserError, match="distinct"):
        load_config(config)


def test_int4_needs_cuda_with_bfloat16():
    check_methods(["int8"], "cpu", bf16=False)
    check_methods(["int8", "int4"], "cuda", bf16=True)
    with pytest.raises(UserError, match="int4 needs a CUDA GPU"):
        check_methods(["int8", "int4"], "cpu", bf16=False)
    assert "bfloat16" in device_problem("int4", "cuda", bf16=False)
