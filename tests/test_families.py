"""Every decoder family reconlib claims (README, Supported models), as a tiny random model built offline:
the adapter reproduces the model's logits, every criterion and pattern prunes every matrix in the blocks
exactly, counted from the parameters themselves, and the saved model reloads with the same logits."""
import copy
import functools

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from reconlib import arch, guard, models, reconstruct
from reconlib.config import RunConfig

FAMILIES = ["llama", "llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "olmo2", "phi", "phi3", "gpt_neox",
            "opt", "gpt2", "qwen3_moe", "mixtral"]
ROUTERS = {"qwen3_moe": "mlp.gate.weight", "mixtral": "mlp.gate.weight"}


@functools.cache
def _built(family: str):
    layers = None if family == "gpt2" else 2  # two blocks: CR's windows, at a tenth of a second a run
    return models.tiny_model(family, num_hidden_layers=layers)


def tiny(family: str):
    return copy.deepcopy(_built(family))


def windows(n=4, T=16, seed=0):
    return torch.randint(0, 256, (n, T), generator=torch.Generator().manual_seed(seed))


def config(**kw):
    return RunConfig(**{**dict(model="tiny", n_calib=4, seq_len=16, epochs=1, batch_size=4, lr=1e-3, device="cpu"),
                        **kw})


def block_matrices(block: nn.Module):
    """(name, W (d_out, d_in)) for every matrix parameter of a block, read from the parameters, not from
    arch.matrices: GPT-2's Conv1D stores Wᵀ, a fused expert parameter holds one matrix per expert."""
    owners = dict(block.named_modules())
    for name, p in block.named_parameters():
        if p.ndim < 2:
            continue
        W = p.detach().T if type(owners[name.rpartition(".")[0]]).__name__ == "Conv1D" else p.detach()
        yield from ((f"{name}[{e}]", w) for e, w in enumerate(W)) if W.ndim == 3 else [(name, W)]


def expected_zeros(W: torch.Tensor, criterion: str) -> int:
    """The zeros of a matrix pruned to 0.5: a whole-matrix count (magnitude), half of every row (Wanda), and
    SparseGPT's rule (one threshold per 128 columns, the weight at rank ⌊0.5 · size⌋ pruned too)."""
    rows, cols = W.shape
    if criterion == "sparsegpt":
        return sum(int(0.5 * rows * min(128, cols - s)) + 1 for s in range(0, cols, 128))
    return rows * (cols // 2) if criterion == "wanda" else int(0.5 * W.numel())


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_one_by_one_give_the_models_logits(family):
    """The adapter's block-by-block forward, through the model's own final norm and head, is the model's logits."""
    model, ids = tiny(family), windows(3, 24, seed=1)
    x, kwargs = arch.capture(model, ids, batch_size=2)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
        h = x
        for i, block in enumerate(arch.blocks(model)):
            h = arch.run_block(block, h, kwargs[i])
        layers, original = arch.blocks(model), list(arch.blocks(model))
        layers[-1] = _Fixed(original[-1], h)  # the model's head then reads the adapter's last output
        logits = model(input_ids=ids, use_cache=False).logits
        for i, block in enumerate(original):
            layers[i] = block
    assert torch.allclose(logits, ref, atol=1e-5), (logits - ref).abs().max()


class _Fixed(nn.Module):
    """Stands in for the last block: returns a given output (the adapter's), whatever its input."""

    def __init__(self, inner, out):
        super().__init__()
        self.inner, self.out = inner, out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, hidden_states, *args, **kwargs):
        return self.out


@pytest.mark.parametrize("recon", ["lr", "br+gp+cr"])
@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_matrix_is_pruned_exactly(family, criterion, sparsity, recon):
    model = tiny(family)
    result = reconstruct.prune(model, config(criterion=criterion, sparsity=sparsity, recon=recon), windows(),
                               progress=False)
    for i, block in enumerate(arch.blocks(model)):
        for name, W in block_matrices(block):
            if name == ROUTERS.get(family):  # left dense, and said so
                assert (W != 0).all() and any(k.endswith(f".*.{name}") for k in result.dense_kept)
                continue
            zeros = W == 0
            if sparsity == "2:4":
                assert (zeros.view(W.shape[0], -1, 4).sum(-1) == 2).all(), f"block {i} {name}"
            else:
                assert zeros.sum().item() == expected_zeros(W, criterion), f"block {i} {name}"
    assert result.unrouted_experts == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_saved_model_reloads_with_the_same_logits(family, tmp_path):
    model, ids = tiny(family), windows(2, 16, seed=2)
    reconstruct.prune(model, config(criterion="wanda", sparsity="2:4", recon="br+gp"), windows(), progress=False)
    models.save_pruned(model, None, tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", attn_implementation=model.config._attn_implementation)
    with torch.no_grad():
        a, b = model(input_ids=ids, use_cache=False).logits, loaded.eval()(input_ids=ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)
    zeros = {n: (p == 0).sum().item() for n, p in model.named_parameters()}
    assert zeros == {n: (p == 0).sum().item() for n, p in loaded.named_parameters()}


def test_a_family_whose_matrices_reconlib_cannot_read_is_refused_before_any_work(monkeypatch):
    """gpt-oss stores its experts transposed, interleaved and with biases: refused by name, nothing pruned."""
    config_ = AutoConfig.for_model(model_type="gpt_oss", hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                   num_experts_per_tok=2, vocab_size=256, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(config_).eval()
    before = {n: p.clone() for n, p in model.named_parameters()}
    monkeypatch.setattr(arch, "capture", lambda *a, **k: pytest.fail("the refusal came after work began"))
    with pytest.raises(guard.Unsupported) as refused:
        reconstruct.prune(model, config(criterion="wanda"), windows(), progress=False)
    message = str(refused.value)
    assert message.startswith("cannot prune gpt_oss (GptOssForCausalLM): block 0")
    assert "mlp.experts.gate_up_proj (4, 64, 64) in GptOssExperts" in message  # what it cannot read
    assert "is_transposed=True, has_bias=True" in message                      # why
    assert "Supported models" in message and "teach reconlib.arch.matrices" in message  # what to do
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_matrix_covers_every_tiny_family():
    assert set(FAMILIES) == set(models.TINY)
