"""Sora model: shapes, loss, causality, ADN init equivalence, HF round trip, generate."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from sora import NORM_CHOICES, SoraConfig, SoraForCausalLM, SoraForSequenceClassification
from sora.modeling_sora import CACHE_FIELD
from sora.norms import AdaptiveDynamicNorm, RMSNorm


def tiny(norm: str, **overrides) -> SoraConfig:
    return SoraConfig.from_preset("tiny", norm=norm, vocab_size=256, **overrides)


def train_a_little(model: torch.nn.Module, steps: int = 3) -> None:
    """Move every weight (ADN's zero-initialized maps included) away from its init."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 24))
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("norm", NORM_CHOICES)
def test_shapes_and_loss(norm):
    torch.manual_seed(0)
    model = SoraForCausalLM(tiny(norm))
    ids = torch.randint(0, 256, (3, 17))
    out = model(ids, labels=ids)
    assert out.logits.shape == (3, 17, 256)
    # An untrained model predicts close to uniform: loss near ln(V).
    assert abs(out.loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.5
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("norm", NORM_CHOICES)
def test_causality(norm):
    torch.manual_seed(0)
    model = SoraForCausalLM(tiny(norm)).eval()
    train_a_little(model)
    model.eval()
    ids = torch.randint(0, 256, (2, 20))
    for t in (0, 7, 18):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 256
        with torch.no_grad():
            a = model(ids, use_cache=False).logits
            b = model(changed, use_cache=False).logits
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-6)


def test_adn_equals_rmsnorm_plus_bias_at_init():
    torch.manual_seed(0)
    adn = AdaptiveDynamicNorm(64, rank=8)
    rms = RMSNorm(64)
    with torch.no_grad():
        adn.weight.uniform_(0.5, 1.5)
        adn.bias.normal_()
        rms.weight.copy_(adn.weight)
    x = torch.randn(3, 11, 64) * 4 + 1
    assert torch.allclose(adn(x), rms(x) + adn.bias, atol=1e-6)
    # The whole model at init: ADN and RMSNorm variants with the same weights give the same logits.
    torch.manual_seed(1)
    model_adn = SoraForCausalLM(tiny("adn"))
    model_rms = SoraForCausalLM(tiny("rmsnorm"))
    model_rms.load_state_dict(model_adn.state_dict(), strict=False)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model_adn(ids).logits, model_rms(ids).logits, atol=1e-5)


def test_adn_uses_running_mean():
    torch.manual_seed(0)
    adn = AdaptiveDynamicNorm(16, rank=4)
    with torch.no_grad():
        adn.gain_up.weight.normal_()
    x = torch.randn(1, 5, 16)
    h = x / x.pow(2).mean(-1, keepdim=True).add(adn.eps).sqrt()
    context = h.cumsum(1) / torch.arange(1, 6)[None, :, None]
    expected = h * (adn.weight + adn.gain_up(adn.gain_down(context))) + adn.bias
    assert torch.allclose(adn(x), expected, atol=1e-5)


@pytest.mark.parametrize("norm", NORM_CHOICES)
def test_hf_round_trip_and_auto_classes(tmp_path, norm):
    torch.manual_seed(0)
    model = SoraForCausalLM(tiny(norm))
    train_a_little(model)
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "sora"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SoraForCausalLM)
    ids = torch.randint(0, 256, (2, 15))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_untied_round_trip(tmp_path):
    model = SoraForCausalLM(tiny("rmsnorm", tie_word_embeddings=False)).eval()
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_left_padded_batch_matches_unpadded():
    """Padding must not change a sequence's logits (attention mask, positions, ADN mean)."""
    torch.manual_seed(0)
    model = SoraForCausalLM(tiny("adn"))
    train_a_little(model)
    model.eval()
    short = torch.randint(2, 256, (1, 5))
    padded = torch.cat([torch.ones(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(short).logits
        batched = model(padded, attention_mask=mask).logits[:, 3:]
    assert torch.allclose(alone, batched, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = SoraForCausalLM(tiny("adn"))
    ids = torch.randint(0, 256, (2, 16))
    model.train()
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_sequence_classification(tmp_path):
    torch.manual_seed(0)
    config = tiny("rmsnorm", num_labels=3, pad_token_id=1)
    model = SoraForSequenceClassification(config)
    ids = torch.randint(2, 256, (4, 10))
    out = model(ids, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3)
    out.loss.backward()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    # Right padding: pooled at the last real token, so padding does not change the logits.
    padded = torch.cat([ids, torch.ones(4, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(4, 10), torch.zeros(4, 3)], dim=1).long()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, loaded(padded, attention_mask=mask).logits, atol=1e-5)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="norm must be one of"):
        SoraConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="divisible"):
        SoraConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        SoraConfig.from_preset("13b")


@pytest.mark.parametrize("norm", NORM_CHOICES)
def test_incremental_decoding_logits_match_full_forward(norm):
    torch.manual_seed(0)
    model = SoraForCausalLM(tiny(norm))
    train_a_little(model)
    model.eval()
    ids = torch.randint(2, 256, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :6], use_cache=True)
        steps, cache = [out.logits], getattr(out, CACHE_FIELD)
        for t in range(6, 12):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
        # A chunked continuation (3 tokens at once after the prefix) takes the masked path.
        chunk = model(ids[:, :6], use_cache=True)
        chunk = torch.cat([chunk.logits, model(ids[:, 6:9], cache=getattr(chunk, CACHE_FIELD)).logits], 1)
    assert torch.allclose(full, torch.cat(steps, 1), atol=1e-5)
    assert torch.allclose(full[:, :9], chunk, atol=1e-5)
