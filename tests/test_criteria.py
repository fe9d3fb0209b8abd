import pytest
import torch

from reconlib import criteria


def W_and_norms(rows=16, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g), torch.rand(cols, generator=g) + 0.1


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_magnitude_prunes_the_smallest_of_the_whole_matrix(ratio):
    W, _ = W_and_norms()
    mask = criteria.select(criteria.score("magnitude", W), ratio)
    assert (~mask).sum().item() == int(W.numel() * ratio)
    assert W.abs()[~mask].max() <= W.abs()[mask].min()  # every pruned weight is below every kept one


@pytest.mark.parametrize("ratio", [0.5, 0.6])
def test_wanda_prunes_exactly_per_row_by_weight_times_input_norm(ratio):
    W, col_sq = W_and_norms()
    S = criteria.score("wanda", W, col_sq)
    assert torch.allclose(S, W.abs() * col_sq.sqrt())
    mask = criteria.select(S, ratio, per_row=True)
    assert ((~mask).sum(1) == int(W.shape[1] * ratio)).all()
    for r in range(W.shape[0]):
        assert S[r][~mask[r]].max() <= S[r][mask[r]].min()


@pytest.mark.parametrize("n_keep, group", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_n_m_keeps_exactly_n_of_every_group_and_the_largest(n_keep, group):
    W, col_sq = W_and_norms()
    for crit in ("magnitude", "wanda"):
        S = criteria.score(crit, W, col_sq)
        mask = criteria.select(S, 1 - n_keep / group, n_keep, group)
        groups = mask.view(W.shape[0], -1, group)
        assert (groups.sum(-1) == n_keep).all()
        Sg = S.view(W.shape[0], -1, group)
        assert (Sg.masked_fill(~groups, float("inf")).amin(-1) >= Sg.masked_fill(groups, -1).amax(-1)).all()


def test_n_m_that_does_not_divide_the_width_is_a_clear_error():
    with pytest.raises(ValueError, match="M=8 does not divide the input width 60"):
        criteria.select(torch.rand(4, 60), 0.5, 4, 8)


def test_stats_share_one_accumulator_for_layers_fed_the_same_input():
    torch.manual_seed(0)
    q, k = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    stats = criteria.Stats({"q": q, "k": k}, hessian=True)
    X = torch.randn(3, 5, 8)
    q(X), k(X)
    stats.flush()
    stats.remove()
    flat = X.reshape(-1, 8)
    assert stats.n == {"q": 15, "k": 15}
    assert torch.allclose(stats.col_sq["q"], flat.pow(2).sum(0))
    assert torch.allclose(stats.H("k"), 2 * flat.T @ flat / 15, atol=1e-5)
    assert stats.XtX["q"] is stats.XtX["k"]


@pytest.mark.parametrize("per_row", [False, True])
def test_ties_still_give_the_exact_count(per_row):
    W, _ = W_and_norms()
    W[:, ::3] = 0  # dead input columns: a third of the scores tie at zero, around the threshold at 20%
    S = criteria.score("magnitude", W)
    mask = criteria.select(S, 0.2, per_row=per_row)
    if per_row:
        assert ((~mask).sum(1) == int(W.shape[1] * 0.2)).all()
    else:
        assert (~mask).sum().item() == int(W.numel() * 0.2)
    assert S[~mask].max() == 0  # only tied zeros were pruned
