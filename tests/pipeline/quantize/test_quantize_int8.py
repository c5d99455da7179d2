"""int8 weight-only quantization of a tiny export: a smaller checkpoint that loads back in a fresh
process with `from_pretrained` alone, holds int8 weights, and gives logits close to the original."""

import json
import subprocess
import sys
import textwrap

import pytest

from pipeline.config.quantize import QuantizeConfig
from pipeline.quantize.report import quantize_markdown
from pipeline.quantize.task import quantize_export

# Measured on the tiny preset (random init, fp32, CPU): the largest logit difference is 0.011.
LOGIT_TOLERANCE = 0.05

RELOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    import sora  # registers model_type sora

    original = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
    quantized = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.float32).eval()
    weight = quantized.model.layers[0].mlp.down_proj.weight
    ids = torch.randint(0, original.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (original(ids).logits - quantized(ids).logits).abs().max().item()
    print(json.dumps({
        "weight_type": type(weight).__name__,
        "qdata_dtype": str(weight.qdata.dtype),
        "head_type": type(quantized.lm_head.weight).__name__,
        "embed_dtype": str(quantized.model.embed_tokens.weight.dtype),
        "max_diff": diff,
    }))
    """
)


@pytest.fixture(scope="module")
def int8_record(tiny_export):
    store, run = tiny_export
    settings = QuantizeConfig(methods=["int8"], prompt_tokens=8, new_tokens=8, repeats=2)
    return quantize_export(store, run, ["int8"], settings, "cpu")["int8"]


def test_int8_checkpoint_reloads_smaller_and_close(tiny_export, int8_record):
    store, run = tiny_export
    record = int8_record
    assert record.weight_bytes_after < 0.6 * record.weight_bytes_before  # projections at 1 byte instead of 4
    assert record.quantized_modules == 4 * 7  # 4 blocks x q, k, v, o, gate, up, down
    assert 0 < record.logits_max_abs_diff < LOGIT_TOLERANCE
    assert record.tokens_per_s_before > 0 and record.tokens_per_s_after > 0
    reloaded = subprocess.run(
        [sys.executable, "-c", RELOAD, store.path(f"runs/{run}/hf"), store.path(f"runs/{run}-int8/hf")],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(reloaded.stdout.strip().splitlines()[-1])
    assert seen["weight_type"] == "Int8Tensor" and seen["qdata_dtype"] == "torch.int8"
    assert seen["head_type"] == "Parameter" and seen["embed_dtype"] == "torch.float32"  # kept in full precision
    assert 0 < seen["max_diff"] < LOGIT_TOLERANCE


def test_lineage_names_source_and_method(tiny_export, int8_record):
    from pipeline.records import ExportInfo

    store, run = tiny_export
    info = ExportInfo.load(store, f"{run}-int8")
    assert info.run == f"{run}-int8" and info.init_from == store.uri(f"runs/{run}/hf")
    assert info.quantization["method"] == "int8" and info.quantization["source_run"] == run
    assert store.exists(f"runs/{run}-int8/hf/config.json")


def test_markdown_table(tiny_export, int8_record):
    store, run = tiny_export
    table = quantize_markdown(store, run)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| original | 5.51 | 1.00 |")
    assert rows[2].startswith(f"| int8 | {int8_record.weight_bytes_after / 1e6:.2f} | {int8_record.size_ratio:.2f} |")
    assert rows[2].endswith("| - |")  # not evaluated yet
    assert quantize_markdown(store, "no-such-run") == ""
