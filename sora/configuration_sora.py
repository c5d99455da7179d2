"""`SoraConfig`: the Hugging Face configuration of a Sora decoder-only Transformer, plus presets.

Presets go from `tiny` (a couple of million parameters, trains in seconds on a CPU) to `7b`.
`SoraConfig.from_preset("tiny", norm="adn")` applies overrides on top of a preset.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

NORM_CHOICES = ("layernorm", "rmsnorm", "adn")

# Shapes follow well-known models of each size (GPT-2 small, TinyLlama-1.1B, Llama-2-7B) so memory
# and FLOPs estimates from `sora plan` can be compared with published numbers.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=4096,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        adn_rank=8,
    ),
    "small": dict(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2560,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=2048,
        adn_rank=16,
    ),
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        adn_rank=32,
    ),
    "7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        adn_rank=64,
        tie_word_embeddings=False,
    ),
}


class SoraConfig(PretrainedConfig):
    """Configuration of a Sora model.

    Args:
        vocab_size: number of token ids (embedding rows).
        hidden_size: model width d.
        intermediate_size: hidden width of the SwiGLU MLP.
        num_hidden_layers: number of Transformer blocks L.
        num_attention_heads: query heads; must divide `hidden_size`.
        num_key_value_heads: key/value heads (grouped-query attention); must divide the query heads.
        max_position_embeddings: longest sequence the model is meant for (RoPE has no table, so
            this is advisory, used by planners and tokenizers).
        rope_theta: RoPE base frequency.
        norm: `layernorm`, `rmsnorm` or `adn` (Adaptive Dynamic Normalization, DESIGN.md s.5).
        norm_eps: epsilon inside the norms.
        adn_rank: rank r of the ADN low-rank maps U_g, U_b.
        initializer_range: std of the normal init of linear and embedding weights.
        tie_word_embeddings: share the input embedding with the output head.
        num_labels: classes of `SoraForSequenceClassification`.
    """

    model_type = "sora"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 4096,
        hidden_size: int = 128,
        intermediate_size: int = 384,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        max_position_embeddings: int = 512,
        rope_theta: float = 10000.0,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        adn_rank: int = 8,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        if norm not in NORM_CHOICES:
            raise ValueError(f"norm must be one of {NORM_CHOICES}, got {norm!r}")
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
            )
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({num_key_value_heads})"
            )
        if (hidden_size // num_attention_heads) % 2:
            raise ValueError("head dimension (hidden_size / num_attention_heads) must be even for RoPE")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.norm = norm
        self.norm_eps = norm_eps
        self.adn_rank = adn_rank
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SoraConfig":
        """Build a config from a named preset (`tiny`, `small`, `1b`, `7b`) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
