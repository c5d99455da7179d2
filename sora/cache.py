"""`SoraCache`: the KV cache plus ADN's causal running sums, in one object.

ADN (DESIGN.md s.5) normalizes token t with the mean of the normalized states 1..t, so decoding
one token at a time needs those sums from earlier steps. They live on the same `Cache` object as
keys and values, and every operation `generate()` applies to the cache applies to them too:
beam search reorders (`reorder_cache`), assisted decoding and DoLa-style rollbacks crop (`crop`),
contrastive search expands and selects rows (`batch_repeat_interleave`, `batch_select_indices`).

Each norm keeps one prefix sum per cached position, not only the newest, because cropping must be
able to go back to any earlier position. The cost is O(T*d) floats per ADN norm, the same order
as the layer's keys and values. Norms other than ADN keep no state.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache


class NormState:
    """Causal prefix sums of one ADN norm: `sums` (B, T, d) and `counts` (B, T, 1), fp32."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.sums is None else self.sums.shape[1]

    def last(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(sum, count) over every cached position, shapes (B, d) and (B, 1); None when empty."""
        if not len(self):
            return None
        return self.sums[:, -1], self.counts[:, -1]

    def extend(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Append the prefix sums of newly processed positions (already offset by `last()`)."""
        sums, counts = sums.detach(), counts.detach()
        if self.sums is None:
            self.sums, self.counts = sums, counts
        else:
            self.sums, self.counts = torch.cat([self.sums, sums], dim=1), torch.cat([self.counts, counts], dim=1)

    def crop(self, length: int) -> None:
        if self.sums is not None:
            self.sums, self.counts = self.sums[:, :length], self.counts[:, :length]

    def select(self, indices: torch.Tensor) -> None:
        if self.sums is not None:
            indices = indices.to(self.sums.device)
            self.sums, self.counts = self.sums.index_select(0, indices), self.counts.index_select(0, indices)

    def repeat_interleave(self, repeats: int) -> None:
        if self.sums is not None:
            self.sums = self.sums.repeat_interleave(repeats, dim=0)
            self.counts = self.counts.repeat_interleave(repeats, dim=0)


class SoraCache(DynamicCache):
    """A `DynamicCache` that also carries the running state of every ADN norm of the model."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm_states: dict[str, NormState] = {}

    def norm_state(self, name: str) -> NormState:
        """The state of the norm called `name` (created empty on first use)."""
        return self.norm_states.setdefault(name, NormState())

    def _sync_norm_lengths(self) -> None:
        # Whatever the crop convention of the installed transformers (final length or tokens to
        # remove), the norm states follow the keys and values.
        length = self.get_seq_length()
        for state in self.norm_states.values():
            state.crop(length)

    def crop(self, *args, **kwargs) -> None:
        super().crop(*args, **kwargs)
        self._sync_norm_lengths()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        for state in self.norm_states.values():
            state.select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        for state in self.norm_states.values():
            state.select(torch.as_tensor(indices))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        for state in self.norm_states.values():
            state.repeat_interleave(repeats)

    def reset(self) -> None:
        super().reset()
        self.norm_states.clear()


def norm_state(cache, name: str) -> NormState | None:
    """The ADN state for `name` on `cache`, or None without a cache.

    A cache of another class cannot carry ADN's state through reorders and crops, so ADN models
    refuse it instead of decoding wrong text; other norms keep no state and accept any cache.
    """
    if cache is None:
        return None
    if not isinstance(cache, SoraCache):
        raise TypeError(
            f"a Sora model with norm='adn' needs a sora.SoraCache to decode incrementally, got {type(cache).__name__}"
        )
    return cache.norm_state(name)
