"""A Sora model with `norm: rmsnorm` exported a second time as a standard Llama checkpoint
(`runs/<run>/hf-llama/`), which transformers, vLLM, TGI and llama.cpp load without Sora.

Why the weights carry over unchanged (checked against sora/layers.py, norms.py, modeling_sora.py
and transformers' modeling_llama.py): both are pre-norm blocks `x + attn(norm(x))`, `x +
mlp(norm(x))` with a final norm; RMSNorm is `x * rsqrt(mean(x^2) + eps) * weight` in fp32 (eps is
`norm_eps`; Llama casts back to the input dtype before the gain, Sora after, which differs only
below fp32); RoPE uses the default frequencies `theta^(-2i/d)` over the whole head with the
rotate-half layout (pairs (i, i + d/2), `cat([angles, angles])`), which is HF Llama's layout, so q
and k need no permutation (Meta's original interleaved checkpoints do, Sora's do not); attention is
SDPA with the default scale 1/sqrt(head_dim), no qk-norm, no biases anywhere, grouped-query heads
repeated in order (`enable_gqa` = `repeat_kv`); the MLP is SwiGLU `down(silu(gate) * up)`; the
head is a bias-free linear, optionally tied to the embedding. Only the module names differ
(`llama_name`). ADN and LayerNorm have no Llama equivalent: those exports stay Sora-only and carry
their modeling code instead (export_remote_code.py).

The Llama export is a second `HFExport` (export.py) planned from a `LlamaForCausalLM` (or
`LlamaForSequenceClassification`) skeleton on the meta device and fed the same tensors, renamed,
as the engine hands them to the Sora export: one tensor in memory, no second pass over the weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedModel

from ..keys import RunKeys
from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from .export import EXPORT_SHARD_SIZE, ExportPlan, HFExport, export_plan

LLAMA_EXPORT_FOLDER = "hf-llama"

# The Sora head class each Llama class replaces: same trunk, same head tensor names.
_LLAMA_CLASS = {
    "SoraForCausalLM": LlamaForCausalLM,
    "SoraForSequenceClassification": LlamaForSequenceClassification,
}
# Block-level module names: Sora's `attn_norm`/`attn`/`mlp_norm` are Llama's
# `input_layernorm`/`self_attn`/`post_attention_layernorm`; everything else is named alike.
_BLOCK_RENAMES = {"attn_norm": "input_layernorm", "attn": "self_attn", "mlp_norm": "post_attention_layernorm"}
_BLOCK_MODULE = re.compile(r"^(model\.layers\.\d+\.)([a-z_]+)(\..+)$")


def llama_export_key(run: str) -> str:
    """`runs/<run>/hf-llama`: beside the Sora export `runs/<run>/hf`, which the pipeline reads."""
    return f"{RunKeys(run).prefix}/{LLAMA_EXPORT_FOLDER}"


def has_llama_equivalent(skeleton: PreTrainedModel) -> bool:
    """Whether this exported Sora model is exactly a Llama model (RMSNorm, a causal-LM or classifier head)."""
    return skeleton.config.norm == "rmsnorm" and type(skeleton).__name__ in _LLAMA_CLASS


def llama_name(sora_name: str) -> str:
    """The Llama state-dict name of a Sora tensor, e.g. `model.layers.0.attn.q_proj.weight` ->
    `model.layers.0.self_attn.q_proj.weight`."""
    match = _BLOCK_MODULE.match(sora_name)
    if match is None:
        return sora_name
    prefix, module, rest = match.groups()
    return f"{prefix}{_BLOCK_RENAMES.get(module, module)}{rest}"


def llama_config(config) -> LlamaConfig:
    """The `LlamaConfig` of the same network as a `SoraConfig` with `norm: rmsnorm` (labels included)."""
    if config.norm != "rmsnorm":
        raise ValueError(f"a Sora model with norm {config.norm!r} has no Llama equivalent (only rmsnorm does)")
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.tie_word_embeddings,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        id2label=config.id2label,
        label2id=config.label2id,
        problem_type=config.problem_type,
    )


def llama_skeleton(skeleton: PreTrainedModel) -> PreTrainedModel:
    """The Llama counterpart of a Sora export skeleton, on the meta device, in its dtype."""
    cls = _LLAMA_CLASS.get(type(skeleton).__name__)
    if cls is None:
        raise ValueError(f"{type(skeleton).__name__} has no Llama counterpart")
    with torch.device("meta"):
        return cls(llama_config(skeleton.config)).to(skeleton.dtype)


class LlamaExport:
    """Rank 0's streamed Llama export: takes the Sora export's tensors (Sora names, any order)."""

    def __init__(
        self,
        store: ObjectStore,
        run: str,
        skeleton: PreTrainedModel,
        plan: ExportPlan,
        scratch: Path,
        max_shard_size: int | str = EXPORT_SHARD_SIZE,
    ) -> None:
        """`skeleton`/`plan`: the Sora export's (export.py `export_plan`); every one of its tensors
        must map onto exactly one of the Llama model's, checked here before any weight moves."""
        self.skeleton = llama_skeleton(skeleton)
        llama_plan = export_plan(self.skeleton, max_shard_size)
        self.names = {name: llama_name(name) for name in plan.names}
        if sorted(self.names.values()) != sorted(llama_plan.names):
            unmapped = sorted(set(self.names.values()) ^ set(llama_plan.names))
            raise RuntimeError(f"export: Sora and Llama tensors do not correspond, e.g. {unmapped[:3]}")
        self.export = HFExport(store, run, llama_plan, scratch, prefix=llama_export_key(run))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.export.write(self.names[name], tensor)

    def finish(self, manifest: DatasetVersion, info: ExportInfo) -> str:
        """Tokenizer, lineage and configs, config.json last; returns the export's URI."""
        return self.export.finish(self.skeleton, manifest, info)
