"""Transformer building blocks of Sora: rotary embeddings, attention, SwiGLU MLP, the block.

Single-device PyTorch only (no distributed code): parallelism is applied elsewhere
(`pipeline/train`). Attention uses `scaled_dot_product_attention`; the fast `is_causal` path is
taken whenever there is no padding and no KV cache.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer

from .cache import norm_state
from .configuration_sora import SoraConfig
from .init import mark_residual_output
from .norms import build_norm


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (B, 1, T, head_dim) for integer positions of shape (B, T).

    Computed on the fly rather than cached in a buffer: it is cheap, and a buffer would need
    special care under meta-device loading and ZeRO-3 partitioning.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None, :, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + head_dim/2) of `x` (B, H, T, head_dim) by the position angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def build_attention_mask(
    padding_mask: torch.Tensor | None, query_len: int, past_len: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B|1, 1, T, past+T) mask, True = may attend; None when plain causal attention does.

    A query may always attend to itself, so rows of left padding never become all-masked (which
    makes SDPA return NaN); those rows are discarded by the caller anyway.
    """
    if padding_mask is None and past_len == 0:
        return None
    if padding_mask is None and query_len == 1:
        return None  # one new token attends to everything cached
    key_len = past_len + query_len
    q_pos = torch.arange(past_len, key_len, device=device)[:, None]
    k_pos = torch.arange(key_len, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None]
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, -key_len:].bool()
    return allowed | (k_pos == q_pos)[None, None]


class SoraAttention(nn.Module):
    """Multi-head (optionally grouped-query) causal self-attention with RoPE."""

    def __init__(self, config: SoraConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            # Without a mask: causal when queries and keys are the same positions (no cache
            # prefix); a single new token after a cache prefix attends to everything.
            is_causal=attn_mask is None and q.shape[-2] == k.shape[-2],
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class SoraMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: SoraConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SoraBlock(GradientCheckpointingLayer):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: SoraConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.adaptive_norm = config.norm == "adn"  # the only norm with running state
        self.attn_norm = build_norm(config.norm, config.hidden_size, config.norm_eps, config.adn_rank)
        self.attn = SoraAttention(config, layer_idx)
        self.mlp_norm = build_norm(config.norm, config.hidden_size, config.norm_eps, config.adn_rank)
        self.mlp = SoraMLP(config)
        mark_residual_output(self.attn.o_proj)
        mark_residual_output(self.mlp.down_proj)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        attn_state = norm_state(cache, f"{self.layer_idx}.attn") if self.adaptive_norm else None
        mlp_state = norm_state(cache, f"{self.layer_idx}.mlp") if self.adaptive_norm else None
        hidden = hidden + self.attn(self.attn_norm(hidden, padding_mask, attn_state), cos, sin, attn_mask, cache)
        return hidden + self.mlp(self.mlp_norm(hidden, padding_mask, mlp_state))
