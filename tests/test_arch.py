import pytest
import torch

from reconlib import arch


def test_blocks_one_by_one_equal_the_model(tiny):
    """Running the captured block-0 inputs through the blocks alone reproduces the HF hidden states,
    for every family (Gemma 3's per-layer sliding masks and rotary tables included)."""
    family, model = tiny
    ids = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(1))
    x, kwargs = arch.capture(model, ids, batch_size=2)
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        h = x
        for i, block in enumerate(arch.blocks(model)):
            assert torch.allclose(h, ref[i], atol=1e-5), f"{family}: block {i} input differs"
            h = arch.run_block(block, h, kwargs[i])
    assert len(kwargs) == len(arch.blocks(model)) == model.config.num_hidden_layers


def test_capture_restores_the_model(tiny):
    _, model = tiny
    before = list(arch.blocks(model))
    arch.capture(model, torch.zeros(2, 8, dtype=torch.long))
    assert list(arch.blocks(model)) == before


def test_linears_are_every_nn_linear_of_a_block(tiny):
    family, model = tiny
    names = set(arch.linears(arch.blocks(model)[0]))
    expected = {"llama": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
                "opt": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                        "fc1", "fc2"}}
    expected["gemma3"] = expected["llama"]
    assert names == expected[family]


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot find the decoder blocks of Linear"):
        arch.blocks(torch.nn.Linear(2, 2))
