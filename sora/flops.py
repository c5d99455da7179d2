"""Parameter and FLOPs accounting, and the device peak used for MFU.

FLOPs/token follow the torchtitan/OLMo convention (DESIGN.md s.5):

    flops_per_token = 6 * N_non_embedding + 12 * L * d * T

N_non_embedding counts every parameter except the input embedding table. The output head is
counted even when tied to the embedding: its matmul runs on every token either way.
"""

from __future__ import annotations

import time

import torch

from .configuration_sora import SoraConfig

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def _norm_params(config: SoraConfig) -> int:
    d = config.hidden_size
    if config.norm == "rmsnorm":
        return d
    if config.norm == "layernorm":
        return 2 * d
    return 2 * d + 4 * d * config.adn_rank  # adn: g, b, and two rank-r maps (down + up each)


def count_parameters(config: SoraConfig) -> dict[str, int]:
    """Exact parameter counts of `SoraForCausalLM(config)`, computed from the config alone.

    Returns `total` (unique trainable parameters), `embedding` (the input table) and
    `non_embedding` (the N of the FLOPs formula, head included).
    """
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv_dim = config.num_key_value_heads * config.head_dim
    attention = d * d * 2 + 2 * d * kv_dim  # q, o and k, v
    block = attention + 3 * d * ff + 2 * _norm_params(config)
    embedding = config.vocab_size * d
    head = config.vocab_size * d
    trunk = layers * block + _norm_params(config)
    total = embedding + trunk + (0 if config.tie_word_embeddings else head)
    return {"total": total, "embedding": embedding, "non_embedding": trunk + head}


def flops_per_token(config: SoraConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) at sequence length `seq_len`."""
    n = count_parameters(config)["non_embedding"]
    return 6.0 * n + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def measure_cpu_matmul_peak(size: int = 1024, seconds: float = 0.5, dtype: torch.dtype = torch.float32) -> float:
    """Measured dense matmul throughput of this CPU in FLOP/s (all intra-op threads)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b  # warm up the BLAS thread pool
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    elapsed = time.perf_counter() - start
    return 2.0 * size**3 * count / elapsed


def peak_flops(device: torch.device | str | None = None) -> tuple[float, str]:
    """Peak FLOP/s of `device` and a label saying where the number comes from.

    CUDA devices are looked up by name in the data-sheet table (bf16 dense); on CPU, or for an
    unknown GPU, the peak is measured with a matmul and labelled as measured.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
            if key.lower() in name.lower():
                return PEAK_BF16_FLOPS[key], f"{key} bf16 dense (data sheet)"
        return _measure_cuda_peak(device), f"{name} bf16 matmul (measured)"
    return measure_cpu_matmul_peak(), "CPU fp32 matmul (measured)"


def _measure_cuda_peak(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2.0 * size**3 * repeats / (time.perf_counter() - start)
