import logging

import torch

from reconlib import criteria, sparsegpt


def layer_problem(rows=32, cols=256, tokens=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    # correlated inputs with uneven channel scales, as in real activations
    X = torch.randn(tokens, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols**0.5)
    X *= torch.rand(cols, generator=g) * 3
    W = torch.randn(rows, cols, generator=g)
    return W, X, 2 * X.T @ X / tokens


def output_error(W, W_hat, X):
    return ((X @ W.T - X @ W_hat.T) ** 2).mean().item()


def test_sparsegpt_beats_magnitude_and_wanda_on_the_same_layer():
    W, X, H = layer_problem()
    W_sgpt, mask, loss = sparsegpt.solve(W, H, 0.5)
    W_mag = W * criteria.select(criteria.score("magnitude", W), 0.5)
    W_wanda = W * criteria.select(criteria.score("wanda", W, X.pow(2).sum(0)), 0.5, per_row=True)
    e = {name: output_error(W, w, X) for name, w in [("sgpt", W_sgpt), ("mag", W_mag), ("wanda", W_wanda)]}
    assert e["sgpt"] < e["wanda"] < e["mag"], e
    assert loss > 0


def test_unstructured_prunes_at_or_below_the_rank_threshold_of_each_128_column_block():
    W, _, H = layer_problem(cols=320)  # blocks of 128, 128, 64
    W_hat, mask, _ = sparsegpt.solve(W, H, 0.6)
    for i1 in range(0, 320, 128):
        block = mask[:, i1:i1 + 128]
        # the references' rule: everything at or below the score at rank int(0.6 n); no ties in random data
        assert (~block).sum().item() == int(block.numel() * 0.6) + 1
    assert torch.equal(W_hat == 0, ~mask)
    assert not torch.equal(W_hat[mask], W[mask])  # the survivors were updated (OBS)


def test_tied_scores_are_pruned_alike_whatever_the_column_order():
    """4-bit weights tie often. With H = I there is no error propagation, so the pruned set is the selection
    alone: permuting the columns must permute the mask, which a tie broken by position would not do."""
    g = torch.Generator().manual_seed(0)
    W = torch.randint(-3, 4, (16, 128), generator=g).float()  # 7 levels: heavy ties
    H = torch.eye(128)
    perm = torch.randperm(128, generator=g)
    _, mask, _ = sparsegpt.solve(W, H, 0.5)
    _, mask_perm, _ = sparsegpt.solve(W[:, perm], H, 0.5)
    assert torch.equal(mask[:, perm], mask_perm)
    pruned, kept = W.abs()[~mask], W.abs()[mask]
    assert pruned.max() < kept.min()  # ties fall on one side together
    assert (~mask).sum() >= W.numel() // 2


def test_n_m_keeps_exactly_n_per_group():
    W, _, H = layer_problem()
    for n_keep, group in [(2, 4), (4, 8)]:
        W_hat, mask, _ = sparsegpt.solve(W, H, 0.5, n_keep, group)
        assert (mask.view(W.shape[0], -1, group).sum(-1) == n_keep).all()
        assert (W_hat[~mask] == 0).all()


def test_singular_hessian_raises_the_damping_and_still_solves(caplog, monkeypatch):
    W, _, _ = layer_problem(cols=16)
    v = torch.randn(16, 1)
    H = v @ v.T  # rank one: singular
    H[3, 3] = 0  # and a dead input
    real = torch.linalg.cholesky_ex
    calls = {"n": 0}

    def flaky(A, upper=False):  # fail the first factorisation, as a near-singular H does in fp32
        calls["n"] += 1
        L, info = real(A, upper=upper)
        return (L, torch.tensor(1)) if calls["n"] == 1 else (L, info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", flaky)
    with caplog.at_level(logging.WARNING):
        W_hat, mask, _ = sparsegpt.solve(W, H, 0.5)
    assert "retrying" in caplog.text
    assert torch.isfinite(W_hat).all()
    assert (W_hat[:, 3] == 0).all()  # dead input: weights dropped
    assert (~mask).sum().item() >= int(W.numel() * 0.5)
