"""What a worker (re)start costs besides imports: DeepSpeed's Muon kernels are compiled on first
use, not when ZeRO's optimizer check imports them (that loaded TorchInductor at every start), and
the CPU peak FLOP/s (a 0.5 s matmul loop on rank 0) is measured once per node."""

import torch
from deepspeed.runtime import compiler

import pipeline.train.engine  # noqa: F401  (installs the lazy compile)
import sora.flops
from pipeline.train.metrics import node_peak_flops


def test_compile_decorator_defers_torch_compile_to_the_first_call(monkeypatch):
    compiled = []

    def fake_compile(function):
        compiled.append(function)
        return lambda *args, **kwargs: ("compiled", function(*args, **kwargs))

    monkeypatch.setattr(torch, "compile", fake_compile)

    @compiler.compile()
    def double(x):
        return 2 * x

    assert compiled == []  # decorating (the module import) compiles nothing
    assert double(3) == ("compiled", 6)
    assert double(4) == ("compiled", 8)
    assert len(compiled) == 1 and compiled[0].__name__ == "double"  # once, on the first call
    assert double.__name__ == "double"


def test_cpu_peak_is_measured_once_per_node_and_thread_count(monkeypatch, tmp_path):
    measured = []

    def fake_peak(device):
        measured.append(torch.get_num_threads())
        return 1e9 * len(measured), "CPU fp32 matmul (measured)"

    monkeypatch.setattr(sora.flops, "peak_flops", fake_peak)
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    assert node_peak_flops(cpu, tmp_path / "cache") == (1e9, "CPU fp32 matmul (measured)")
    assert node_peak_flops(cpu, tmp_path / "cache") == (1e9, "CPU fp32 matmul (measured)")  # a restart
    assert measured == [threads]
    try:
        torch.set_num_threads(threads + 1)
        assert node_peak_flops(cpu, tmp_path / "cache")[0] == 2e9  # measured again for that setting
    finally:
        torch.set_num_threads(threads)
    assert node_peak_flops(cpu, tmp_path / "cache")[0] == 1e9
    (tmp_path / "cache" / "peak-flops.json").write_text("{not json")
    assert node_peak_flops(cpu, tmp_path / "cache")[0] == 3e9  # a damaged cache is measured over
