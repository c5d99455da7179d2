"""The pipeline view of the model matches the flat model; state-dict conversion round-trips."""

import pytest
import torch

from sora import SoraConfig, SoraForCausalLM, causal_lm_loss
from sora.pipeline_view import (
    flat_to_pipeline_state_dict,
    load_pipeline_weights,
    materialize,
    pipeline_layer_specs,
    pipeline_state_dict,
    pipeline_to_flat_state_dict,
    run_sequential,
)


@pytest.mark.parametrize("norm", ["rmsnorm", "adn", "layernorm"])
@pytest.mark.parametrize("tied", [True, False])
def test_pipeline_layers_match_flat_model(norm, tied):
    torch.manual_seed(0)
    config = SoraConfig.from_preset("tiny", norm=norm, vocab_size=300, tie_word_embeddings=tied)
    flat = SoraForCausalLM(config)
    with torch.no_grad():  # make ADN's adaptive maps non-zero so they are exercised
        for p in flat.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    specs = pipeline_layer_specs(config)
    assert len(specs) == config.num_hidden_layers + 3
    assert (specs[0].tie_key == specs[-1].tie_key == "embed") == tied

    flat_state = flat.state_dict()
    pipe_state = flat_to_pipeline_state_dict(flat_state, config)
    layers = materialize(specs)
    load_pipeline_weights(layers, pipe_state)

    ids = torch.randint(0, 300, (2, 33))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        flat_loss = causal_lm_loss(flat(inputs, use_cache=False).logits, targets)
        pipe_loss = causal_lm_loss(run_sequential(layers, inputs), targets)
    assert abs(flat_loss.item() - pipe_loss.item()) < 1e-5

    back = pipeline_to_flat_state_dict(pipeline_state_dict(layers), config)
    assert set(back) == set(flat_state)
    for key, value in flat_state.items():
        assert torch.equal(back[key], value), key


def test_tied_head_shares_the_embedding_module():
    config = SoraConfig.from_preset("tiny", vocab_size=300)
    layers = materialize(pipeline_layer_specs(config))
    assert layers[-1].module is layers[0]


@pytest.mark.parametrize("norm", ["rmsnorm", "adn"])
def test_pipeline_layers_initialize_like_the_flat_model(norm):
    """One init for both layouts: same std per parameter kind (o_proj/down_proj scaled by 1/sqrt(2L))."""
    config = SoraConfig.from_preset("small", norm=norm, num_hidden_layers=4, vocab_size=4096)
    torch.manual_seed(0)
    flat = dict(SoraForCausalLM(config).named_parameters())
    torch.manual_seed(0)
    pipe = pipeline_state_dict(materialize(pipeline_layer_specs(config)))
    flat_pipe = pipeline_to_flat_state_dict(pipe, config)
    assert flat_pipe.keys() >= {k for k in flat if k != "lm_head.weight"}
    residual_std = config.initializer_range / (2 * config.num_hidden_layers) ** 0.5
    for name, param in flat.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        a, b = param.detach(), flat_pipe[name]
        if a.dim() == 1 or "up.weight" in name and "adn" in norm and a.abs().max() == 0:
            torch.testing.assert_close(a, b)  # norms: ones / zeros, exactly
            continue
        assert abs(a.std().item() - b.std().item()) < 0.05 * a.std().item(), name
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert abs(b.std().item() - residual_std) < 0.05 * residual_std, name
