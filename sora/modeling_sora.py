"""Sora model classes as Hugging Face `PreTrainedModel`s.

`SoraModel` (the trunk), `SoraForCausalLM` (language modelling, `generate()` with a KV cache) and
`SoraForSequenceClassification` (last-token pooling). Loading and saving go through the usual
`save_pretrained` / `from_pretrained` with safetensors; `sora/__init__.py` registers the classes
with the Auto factories.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from .cache import SoraCache, norm_state
from .configuration_sora import SoraConfig
from .init import init_sora_weights
from .layers import SoraBlock, build_attention_mask, rotary_cos_sin
from .norms import build_norm

# The output field that carries the cache: `cache` from transformers 5.2x on (the old name still
# works there but logs a deprecation warning on every forward), `past_key_values` before.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class SoraPreTrainedModel(PreTrainedModel):
    """Shared weight init and HF capability flags."""

    config_class = SoraConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SoraBlock"]
    _supports_sdpa = True
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module: nn.Module) -> None:
        init_sora_weights(module, self.config)


class SoraModel(SoraPreTrainedModel):
    """Embedding, L blocks and the final norm; returns hidden states."""

    def __init__(self, config: SoraConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([SoraBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = build_norm(config.norm, config.hidden_size, config.norm_eps, config.adn_rank)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: SoraCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: SoraCache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`cache` is the KV cache (+ ADN state); `past_key_values` is its name before transformers 5.2x."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = resolve_cache_argument(cache, past_key_values)
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq = hidden.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = SoraCache()
        if not use_cache:
            cache = None
        past_len = cache.get_seq_length() if cache is not None else 0

        padding_mask = attention_mask
        if padding_mask is not None and bool(padding_mask.all()):
            padding_mask = None  # all real tokens: keep the fused causal fast path
        if position_ids is None:
            if padding_mask is not None:
                position_ids = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
            else:
                position_ids = torch.arange(past_len, past_len + seq, device=hidden.device)[None].expand(batch, -1)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        attn_mask = build_attention_mask(padding_mask, seq, past_len, hidden.device)
        query_padding = padding_mask[:, -seq:] if padding_mask is not None else None

        for block in self.layers:
            hidden = block(hidden, cos, sin, attn_mask=attn_mask, padding_mask=query_padding, cache=cache)
        final_state = norm_state(cache, "final") if self.config.norm == "adn" else None
        hidden = self.norm(hidden, query_padding, final_state)
        return BaseModelOutputWithPast(last_hidden_state=hidden, **{CACHE_FIELD: cache})


def set_activation_checkpointing(model: nn.Module, every: int) -> int:
    """Recompute block activations in the backward pass instead of keeping them from the forward.

    `every`: 0 off, 1 every block, n the blocks whose index is a multiple of n (one block in n; the
    others keep their activations, trading memory back for less recomputation). A checkpointed
    block keeps only its input until its backward runs its forward again. Applies to any module
    holding Sora blocks: the flat models and a pipeline stage's layers (`pipeline_view.BlockPipe`),
    counting blocks by their index in the whole model so every stage layout checkpoints the same
    blocks. Uses torch's non-reentrant checkpoint through transformers' `GradientCheckpointingLayer`,
    which wraps the block's `forward`: module hooks (ZeRO-3's parameter gathering) stay outside the
    checkpoint, and the recomputation gathers the parameters again through the hooks of the
    block's submodules. Returns the number of blocks checkpointed.
    """
    if every < 0:
        raise ValueError(f"activation checkpointing interval must be 0 (off) or a block count >= 1, not {every}")
    recompute = functools.partial(checkpoint, use_reentrant=False)
    checkpointed = 0
    for module in model.modules():
        if isinstance(module, SoraBlock):
            module.gradient_checkpointing = every > 0 and module.layer_idx % every == 0
            module._gradient_checkpointing_func = recompute
            checkpointed += module.gradient_checkpointing
        elif isinstance(module, SoraModel):
            module.gradient_checkpointing = every > 0  # no KV cache while training with recomputation
    return checkpointed


def resolve_cache_argument(cache, past_key_values):
    """The one cache passed under either name (transformers >= 5.2x passes `cache=`)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of `logits` (B, T, V) against already-aligned `targets` (B, T), in fp32.

    A batch without any target (every label `ignore_index`) has loss 0 and zero gradients, not
    NaN: cross-entropy's own mean would divide by zero and poison the whole optimizer step.
    """
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    return total / (targets != ignore_index).sum().clamp(min=1)


class SoraForCausalLM(SoraPreTrainedModel, GenerationMixin):
    """Sora trunk + language-model head (tied to the embedding when `tie_word_embeddings`)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SoraConfig) -> None:
        super().__init__(config)
        self.model = SoraModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: SoraCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: SoraCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Labels follow the HF convention: same positions as `input_ids`, shifted here."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=resolve_cache_argument(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits[:, :-1], labels[:, 1:])
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(out, CACHE_FIELD)})

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Let `generate()` build its default cache, then make it a `SoraCache` (ADN's state included)."""
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        for name in ("cache", "past_key_values"):  # the name differs across transformers 5.x
            if type(model_kwargs.get(name)) is DynamicCache:
                model_kwargs[name] = SoraCache(config=self.config)
        return result


class SoraForSequenceClassification(SoraPreTrainedModel):
    """Sora trunk + a linear classifier on the last real token's hidden state."""

    def __init__(self, config: SoraConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SoraModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, use_cache=False
        )
        hidden = out.last_hidden_state
        last = _last_real_token_index(input_ids, attention_mask, self.config.pad_token_id, hidden.shape[1])
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = self.score(pooled)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)


def _last_real_token_index(input_ids, attention_mask, pad_token_id, seq_len: int) -> torch.Tensor:
    """Index of the last non-padding token of each row (right padding assumed)."""
    if attention_mask is not None:
        positions = torch.arange(seq_len, device=attention_mask.device)
        return (attention_mask.bool() * positions).amax(dim=-1)
    if input_ids is not None and pad_token_id is not None:
        positions = torch.arange(seq_len, device=input_ids.device)
        return ((input_ids != pad_token_id) * positions).amax(dim=-1)
    batch = input_ids.shape[0] if input_ids is not None else 1
    return torch.full((batch,), seq_len - 1, dtype=torch.long)
