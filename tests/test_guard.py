import pytest
import torch

from reconlib import arch, guard, models, reconstruct
from reconlib.config import RunConfig


def config(**kw):
    return RunConfig(**{**dict(model="tiny", n_calib=4, seq_len=16, batch_size=4, device="cpu", criterion="wanda",
                               recon="lr"), **kw})


def windows():
    return torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))


def test_a_run_that_leaves_the_experts_dense_fails_on_the_guard(monkeypatch):
    """Before #38 the adapter pruned nn.Linear only, so a Qwen3-MoE's fused experts stayed dense while the run
    reported sparsity 0.5. Put that behaviour back: the guard stops the run and names the experts."""
    real = reconstruct.choose_masks

    def linears_only(block, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(arch, "matrices", lambda b: {n: arch.Matrix(l.weight, l, n) for n, l in arch.linears(b).items()})
            return real(block, *args, **kwargs)

    monkeypatch.setattr(reconstruct, "choose_masks", linears_only)
    model = models.tiny_model("qwen3_moe", num_hidden_layers=2)
    with pytest.raises(guard.DenseLeft, match=r"^block 0: mlp\.experts\.gate_up_proj\[0, 1, 2, 3, …\] \(8 of 8 "
                                              r"experts, 0\.0% zeros at most\), mlp\.experts\.down_proj.*: asked 50%"):
        reconstruct.prune(model, config(), windows(), progress=False)


def test_the_guard_counts_zeros_from_the_parameters():
    block = arch.blocks(models.tiny_model("llama"))[0]
    with pytest.raises(guard.DenseLeft, match=r"self_attn\.q_proj\.weight \(0\.0% zeros\)"):
        guard.check(0, block, (0.5, 0, 0))
    with torch.no_grad():
        for p in block.parameters():
            if p.ndim == 2:
                p[:, : p.shape[1] // 4] = 0  # a quarter: pruned, but not as asked
    with pytest.raises(guard.DenseLeft, match=r"mlp\.down_proj\.weight \(25\.0% zeros\)"):
        guard.check(0, block, (0.5, 0, 0))
    with torch.no_grad():
        for p in block.parameters():
            if p.ndim == 2:
                p[:, : p.shape[1] // 2] = 0
    guard.check(0, block, (0.5, 0, 0))


def test_dense_kept_names_each_kind_of_weight_left_dense():
    kept = guard.dense_kept(models.tiny_model("qwen3_moe", num_hidden_layers=2))
    assert kept["model.layers.*.mlp.gate.weight"].startswith("router")
    assert kept["model.layers.*.input_layernorm.weight"] == "norm scale (1-D, not a matrix)"
    assert kept["model.embed_tokens.weight"].startswith("embedding: outside the decoder blocks")
    assert kept["lm_head.weight"].startswith("lm_head")
    assert not any("experts" in k or "proj" in k for k in kept)
    gpt2 = guard.dense_kept(models.tiny_model("gpt2"))
    assert gpt2["transformer.h.*.attn.c_attn.bias"] == "bias (1-D, not a matrix)"
    assert gpt2["transformer.wpe.weight"].startswith("embedding")


def test_an_unreadable_matrix_in_a_block_is_refused_before_any_work():
    model = models.tiny_model("llama", num_hidden_layers=2)
    arch.blocks(model)[1].mlp.register_parameter("lora", torch.nn.Parameter(torch.ones(4, 64)))
    with pytest.raises(guard.Unsupported, match=r"cannot prune llama \(LlamaForCausalLM\): block 1 holds weight "
                                                r"matrices reconlib cannot read: mlp\.lora \(4, 64\) in LlamaMLP"):
        reconstruct.prune(model, config(), windows(), progress=False)
    assert not any((p == 0).any() for p in arch.blocks(model)[0].parameters())
