"""Normalization layers: LayerNorm, RMSNorm and ADN (Adaptive Dynamic Normalization).

ADN (DESIGN.md section 5) adapts gain and shift to the normalized states seen so far, causally:

    h_t = x_t / rms(x_t)
    c_t = (1/t) * sum_{k<=t} h_k
    ADN(x)_t = h_t * (g + U_g c_t) + (b + U_b c_t)

U_g and U_b are rank-r maps (up @ down) whose `up` factor starts at zero, so at initialization ADN
is exactly RMSNorm with a bias, and the cost is O(T*d*r). Every norm takes an optional padding
mask; only ADN uses it (padding must not leak into the running mean) and an optional running
state (`sora.cache.NormState`, kept on the KV cache) so that incremental decoding gives the same
result as a full forward.
"""

from __future__ import annotations

import torch
from torch import nn

from .cache import NormState


class LayerNorm(nn.Module):
    """Standard LayerNorm (mean-centred, learned gain and bias)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, state: NormState | None = None
    ) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm (no centring, learned gain); computed in fp32 for stability under bf16."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, state: NormState | None = None
    ) -> torch.Tensor:
        return (rms_normalize(x, self.eps) * self.weight.float()).to(x.dtype)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dimension, in fp32."""
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


class AdaptiveDynamicNorm(nn.Module):
    """ADN: RMS normalization whose gain and shift follow the causal running mean of the input."""

    def __init__(self, dim: int, rank: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # g
        self.bias = nn.Parameter(torch.zeros(dim))  # b
        # U = up @ down. `down` gets a random init and `up` zeros (as in LoRA): the product is zero
        # at init, yet gradients reach `up` immediately, so the adaptive path can learn.
        self.gain_down = nn.Linear(dim, rank, bias=False)
        self.gain_up = nn.Linear(rank, dim, bias=False)
        self.shift_down = nn.Linear(dim, rank, bias=False)
        self.shift_up = nn.Linear(rank, dim, bias=False)
        self.reset_adaptive_parameters()

    def reset_adaptive_parameters(self, std: float = 0.02) -> None:
        """Initialize U_g and U_b to zero maps (random `down`, zero `up`)."""
        nn.init.normal_(self.gain_down.weight, std=std)
        nn.init.normal_(self.shift_down.weight, std=std)
        nn.init.zeros_(self.gain_up.weight)
        nn.init.zeros_(self.shift_up.weight)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, state: NormState | None = None
    ) -> torch.Tensor:
        """Normalize `x` of shape (B, T, d).

        mask: optional (B, T) with 1 for real tokens, 0 for padding (excluded from the mean).
        state: optional `NormState` (kept on a `SoraCache`) holding the prefix sums of earlier
            positions; extended here, so decoding token by token matches a full-sequence forward.
        """
        h = rms_normalize(x, self.eps)
        weights = torch.ones(h.shape[:2] + (1,), dtype=h.dtype, device=h.device)
        if mask is not None:
            weights = mask[..., None].to(h.dtype)
        running_sum = torch.cumsum(h * weights, dim=1)
        running_count = torch.cumsum(weights, dim=1)
        earlier = state.last() if state is not None else None
        if earlier is not None:
            running_sum = running_sum + earlier[0][:, None, :]
            running_count = running_count + earlier[1][:, None, :]
        if state is not None:
            state.extend(running_sum, running_count)
        context = (running_sum / running_count.clamp(min=1.0)).to(x.dtype)
        gain = self.weight + self.gain_up(self.gain_down(context))
        shift = self.bias + self.shift_up(self.shift_down(context))
        return (h.to(x.dtype) * gain + shift).to(x.dtype)


def build_norm(kind: str, dim: int, eps: float, adn_rank: int) -> nn.Module:
    """Return the norm module named by `kind` (`layernorm`, `rmsnorm`, `adn`)."""
    if kind == "layernorm":
        return LayerNorm(dim, eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    if kind == "adn":
        return AdaptiveDynamicNorm(dim, adn_rank, eps)
    raise ValueError(f"unknown norm {kind!r}")
