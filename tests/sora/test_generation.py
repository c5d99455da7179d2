"""`generate()` with the KV cache gives the same per-step scores as without it, for every norm and
decoding mode, and the cache operations generate uses (reorder, crop) keep ADN's state in step.

Scores, not tokens, are compared: a model that silently ran without its cache can still pick the
same argmax tokens for a few steps, but not the same logits.
"""

import pytest
import torch

from sora import NORM_CHOICES, SoraConfig, SoraForCausalLM
from sora.cache import SoraCache
from sora.modeling_sora import CACHE_FIELD

ATOL = 1e-4  # fp32 on CPU; cached and uncached paths sum in different orders


def trained_model(norm: str) -> SoraForCausalLM:
    """A tiny model trained for a few steps, so ADN's adaptive maps are non-zero and matter."""
    torch.manual_seed(0)
    model = SoraForCausalLM(SoraConfig.from_preset("tiny", norm=norm, vocab_size=256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        ids = torch.randint(0, 256, (2, 24))
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module", params=NORM_CHOICES)
def model(request):
    return trained_model(request.param)


def generate(model, prompt, use_cache: bool, **kwargs):
    torch.manual_seed(1234)  # sampling draws the same numbers in both runs
    return model.generate(
        prompt,
        max_new_tokens=8,
        use_cache=use_cache,
        return_dict_in_generate=True,
        output_logits=True,
        output_scores=True,
        pad_token_id=1,
        **kwargs,
    )


def assert_same_generation(cached, uncached):
    assert torch.equal(cached.sequences, uncached.sequences)
    assert len(cached.logits) == len(uncached.logits) == 8
    for step, (a, b) in enumerate(zip(cached.logits, uncached.logits, strict=True)):
        assert torch.allclose(a, b, atol=ATOL), f"step {step}: max diff {(a - b).abs().max():.2e}"


MODES = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 20, "temperature": 0.9},
    "beam": {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
}


@pytest.mark.parametrize("mode", MODES)
def test_generate_with_cache_matches_without(model, mode):
    prompt = torch.randint(2, 256, (2, 6))
    cached = generate(model, prompt, True, **MODES[mode])
    uncached = generate(model, prompt, False, **MODES[mode])
    assert_same_generation(cached, uncached)
    if mode == "beam":
        assert torch.allclose(cached.sequences_scores, uncached.sequences_scores, atol=ATOL)


def test_assisted_decoding_crops_the_cache(model):
    """Prompt-lookup decoding proposes tokens and crops the rejected ones from the cache."""
    prompt = torch.randint(2, 256, (1, 4)).repeat(1, 3)  # repeats, so lookups propose candidates
    cached = generate(model, prompt, True, do_sample=False, prompt_lookup_num_tokens=3)
    uncached = generate(model, prompt, False, do_sample=False)
    assert torch.equal(cached.sequences, uncached.sequences)


def test_cache_crop_and_reorder_keep_norm_state(model):
    ids = torch.randint(2, 256, (3, 10))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids, use_cache=True)
        cache = getattr(out, CACHE_FIELD)
        assert isinstance(cache, SoraCache)
        # Crop back to 6 positions and decode the last 4 again: same logits as the full forward.
        cache.crop(-4)
        assert cache.get_seq_length() == 6
        assert all(len(state) == 6 for state in cache.norm_states.values())
        again = model(ids[:, 6:], cache=cache, use_cache=True).logits
        assert torch.allclose(again, full[:, 6:], atol=1e-5)
        # Reorder rows (beam search) and continue: each row follows its new sequence.
        order = torch.tensor([2, 0, 1])
        cache.reorder_cache(order)
        nxt = torch.randint(2, 256, (3, 1))
        step = model(nxt, cache=cache, use_cache=True).logits
        reference = model(torch.cat([ids[order], nxt], 1), use_cache=False).logits[:, -1:]
        assert torch.allclose(step, reference, atol=1e-5)


def test_adn_refuses_a_cache_without_its_state():
    from transformers.cache_utils import DynamicCache

    model = trained_model("adn")
    with pytest.raises(TypeError, match="SoraCache"):
        model(torch.randint(2, 256, (1, 4)), cache=DynamicCache(), use_cache=True)
