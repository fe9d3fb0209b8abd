import pytest
import torch

from reconlib import admm, refit, sparsegpt
from test_refit import lstsq_rows
from test_sparsegpt import layer_problem, output_error

PATTERNS = [(0.5, 0, 0), (0.7, 0, 0), (0.5, 2, 4)]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_weights_for_its_mask_are_the_lstsq_on_the_kept_columns(pattern):
    W, X, H = layer_problem(rows=12, cols=64, tokens=512)
    W_hat, mask, _ = admm.solve(W, H, *pattern)
    lam = 0.01 * torch.diag(H).mean().item()
    assert torch.allclose(W_hat, lstsq_rows(W, X, mask, lam=lam, c=2 / X.shape[0]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_error_is_at_most_sparsegpts_on_the_same_statistics(pattern, seed):
    W, X, H = layer_problem(seed=seed)
    W_sgpt, _, _ = sparsegpt.solve(W, H, *pattern)
    W_admm, _, loss = admm.solve(W, H, *pattern)
    assert output_error(W, W_admm, X) <= output_error(W, W_sgpt, X)
    assert loss == pytest.approx(refit.loss(W, W_admm, H), rel=1e-4)


@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.7])
def test_unstructured_sparsity_is_exact(ratio):
    W, _, H = layer_problem(cols=128)
    W_hat, mask, _ = admm.solve(W, H, ratio)
    assert (~mask).sum().item() == int(W.numel() * ratio)
    assert torch.equal(W_hat == 0, ~mask)


@pytest.mark.parametrize("n_keep, group", [(2, 4), (4, 8)])
def test_n_m_keeps_exactly_n_of_every_group(n_keep, group):
    W, _, H = layer_problem(cols=128)
    W_hat, mask, _ = admm.solve(W, H, 1 - n_keep / group, n_keep, group)
    assert (mask.view(W.shape[0], -1, group).sum(-1) == n_keep).all()
    assert torch.equal(W_hat == 0, ~mask)


def test_the_mask_moves_from_the_one_shot_choice():
    """The iterations re-choose the mask (prune_iters = 0 keeps the first choice from the normalised weights)."""
    W, _, H = layer_problem()
    _, first, _ = admm.solve(W, H, 0.5, prune_iters=0)
    _, mask, _ = admm.solve(W, H, 0.5)
    assert not torch.equal(first, mask)


@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
def test_an_admm_run_has_the_asked_pattern_and_beats_sparsegpt_lr(windows, sparsity):
    from reconlib import reconstruct
    from reconlib.config import RunConfig
    from reconlib.models import tiny_model

    calib, _ = windows
    final = {}
    for criterion in ("sparsegpt", "admm"):
        config = RunConfig(model="tiny", n_calib=8, seq_len=32, batch_size=4, device="cpu", criterion=criterion,
                           sparsity=sparsity)
        result = reconstruct.prune(tiny_model("llama"), config, calib, progress=False)
        final[criterion] = result.final_error
    assert result.sparsity == 0.5 and result.block_sparsity == [0.5] * len(result.block_sparsity)  # ADMM's: exact
    assert final["admm"] < final["sparsegpt"], final


def test_admm_fields_are_checked():
    from reconlib.config import RunConfig

    with pytest.raises(ValueError, match="already ends with the least-squares solve"):
        RunConfig(criterion="admm", refit=True)
    with pytest.raises(ValueError, match="lower admm_prune_iters"):
        RunConfig(criterion="admm", admm_iters=10)
    with pytest.raises(ValueError, match="admm_rho must be > 0"):
        RunConfig(criterion="admm", admm_rho=0)
