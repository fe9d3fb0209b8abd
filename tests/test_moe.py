import pytest
import torch

from reconlib import arch, criteria, models, reconstruct
from reconlib.config import RunConfig


def config(**kw):
    return RunConfig(**{**dict(model="tiny", n_calib=8, seq_len=16, epochs=2, batch_size=4, lr=1e-3, device="cpu",
                               criterion="wanda", recon="lr"), **kw})


def windows(token=None):
    if token is not None:  # one token repeated: every position has the same hidden state, so the same experts
        return torch.full((8, 16), token)
    return torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))


def moe_inputs(model, calib):
    """The input of block 0's mixture-of-experts layer, (tokens, d), from a dense forward."""
    seen = []
    mlp = arch.blocks(model)[0].mlp
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=calib, use_cache=False)
    handle.remove()
    return torch.cat(seen), mlp


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_each_expert_is_pruned_with_the_tokens_the_router_sends_it(family):
    """Wanda's ‖X_j‖ of expert e: over the tokens whose top-k holds e (routing recomputed here from the router),
    for gate_up_proj[e] the hidden states, for down_proj[e] act(gate) ⊙ up of the dense expert."""
    model, calib = models.tiny_model(family, num_hidden_layers=2), windows()
    x, mlp = moe_inputs(model, calib)
    experts = mlp.experts
    _, _, top_k = mlp.gate(x)
    dense_gate_up, dense_down = experts.gate_up_proj.detach().clone(), experts.down_proj.detach().clone()
    result = reconstruct.prune(model, config(), calib, progress=False)
    differs = 0
    for e in range(experts.gate_up_proj.shape[0]):
        X = x[(top_k == e).any(-1)]
        assert len(X) > 0
        gate, up = (X @ dense_gate_up[e].T).chunk(2, dim=-1)
        for name, inputs, W in (("gate_up_proj", X, dense_gate_up[e]),
                                ("down_proj", experts.act_fn(gate) * up, dense_down[e])):
            mask = result.masks[0][f"mlp.experts.{name}.{e}"]
            expected = criteria.select(criteria.score("wanda", W, inputs.pow(2).sum(0)), 0.5, per_row=True)
            assert torch.equal(mask, expected), f"expert {e} {name}"
            all_tokens = criteria.select(criteria.score("wanda", W, (x if name == "gate_up_proj" else inputs).pow(2).sum(0)),
                                         0.5, per_row=True)
            differs += not torch.equal(mask, all_tokens)
    assert differs > 0  # the routing matters: some expert's mask is not the one all tokens would give


def test_an_expert_no_token_reaches_is_pruned_by_magnitude_and_named():
    model = models.tiny_model("qwen3_moe", num_hidden_layers=2)
    result = reconstruct.prune(model, config(), windows(token=7), progress=False)
    unrouted = result.unrouted_experts
    experts = arch.blocks(model)[0].mlp.experts
    n_experts = experts.gate_up_proj.shape[0]
    # identical tokens reach the same k experts in each block: the other experts of both matrices are named
    assert len(unrouted) == 2 * 2 * (n_experts - model.config.num_experts_per_tok)
    name = next(k for k in unrouted if k.startswith("0.mlp.experts.gate_up_proj."))
    assert unrouted[name] == ("no calibration token was routed to this expert: pruned by magnitude per row at the "
                              "same sparsity")
    e = int(name.rsplit(".", 1)[1])
    W = experts.gate_up_proj[e]
    assert ((W == 0).sum(1) == W.shape[1] // 2).all()  # pruned all the same, half of each row


def test_the_router_is_left_dense_and_the_record_says_so():
    model = models.tiny_model("mixtral", num_hidden_layers=2)
    result = reconstruct.prune(model, config(sparsity="2:4"), windows(), progress=False)
    assert "router" in result.dense_kept["model.layers.*.mlp.gate.weight"]
    assert all((b.mlp.gate.weight != 0).all() for b in arch.blocks(model))
    assert result.sparsity == pytest.approx(0.5)
    assert {k for k in result.layer_sparsity if "experts" in k} == {
        f"{i}.mlp.experts.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")}


def test_reconstruction_trains_the_experts_surviving_weights_under_their_masks():
    calib = windows()
    lr_model, br_model = (models.tiny_model("qwen3_moe", num_hidden_layers=2) for _ in range(2))
    lr = reconstruct.prune(lr_model, config(), calib, progress=False)
    br = reconstruct.prune(br_model, config(recon="br+gp"), calib, progress=False)
    for name in ("gate_up_proj", "down_proj"):
        mask = torch.stack([br.masks[0][f"mlp.experts.{name}.{e}"] for e in range(8)])
        assert torch.equal(mask, torch.stack([lr.masks[0][f"mlp.experts.{name}.{e}"] for e in range(8)]))
        trained, untrained = (getattr(arch.blocks(m)[0].mlp.experts, name) for m in (br_model, lr_model))
        assert (trained[~mask] == 0).all()
        assert (trained[mask] != untrained[mask]).float().mean() > 0.9  # Adam moved the survivors
    assert br.final_error < lr.final_error


def test_sequential_sparsegpt_prunes_each_expert_as_its_tokens_arrive():
    model = models.tiny_model("qwen3_moe", num_hidden_layers=2)
    result = reconstruct.prune(model, config(criterion="sparsegpt", sparsity="2:4", sequential=True), windows(),
                               progress=False)
    for block in arch.blocks(model):
        W = block.mlp.experts.down_proj
        assert ((W == 0).view(*W.shape[:2], -1, 4).sum(-1) == 2).all()
    assert len(result.block_error) == 2 and result.unrouted_experts == {}


def test_block_by_block_loading_refuses_a_mixture_of_experts(tmp_path):
    """On disk the experts are one tensor each (transformers unfuses them when saving), in memory fused."""
    from reconlib import lazy

    models.save_pruned(models.tiny_model("mixtral", num_hidden_layers=1), None, tmp_path / "moe")
    with pytest.raises(ValueError, match="cannot read mixtral: .* Drop --low-memory"):
        lazy.load(str(tmp_path / "moe"))
