import torch

from reconlib import criteria, refit
from test_sparsegpt import layer_problem, output_error


def lstsq_rows(W, X, mask, lam=0.0, c=1.0):
    """The independent solve: torch.linalg.lstsq per output row on the kept columns, in float64, of
    min c‖X w̄ − X_S ŵ_S‖² + λ‖w̄_S − ŵ_S‖² (λ = 0: plain least squares)."""
    X, W = X.double(), W.double()
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        S = mask[r]
        A = (c**0.5) * X[:, S]
        y = (c**0.5) * X @ W[r]
        if lam:
            A = torch.cat([A, lam**0.5 * torch.eye(int(S.sum()), dtype=A.dtype)])
            y = torch.cat([y, lam**0.5 * W[r, S]])
        out[r, S] = torch.linalg.lstsq(A, y[:, None]).solution[:, 0]
    return out.float()


def masks(W, X):
    """Masks of every shape the solve meets: per matrix (rows keep different counts), per row, N:M."""
    return {"magnitude 0.6": criteria.select(W.abs(), 0.6),
            "wanda 0.5": criteria.select(criteria.score("wanda", W, X.pow(2).sum(0)), 0.5, per_row=True),
            "wanda 0.25": criteria.select(criteria.score("wanda", W, X.pow(2).sum(0)), 0.25, per_row=True),
            "2:4": criteria.select(W.abs(), 0.5, 2, 4)}


def test_survivors_equal_lstsq_on_the_kept_columns_without_damping():
    W, X, H = layer_problem(rows=12, cols=64, tokens=512)
    for name, mask in masks(W, X).items():
        W_hat = refit.solve(W, H, mask, percdamp=0.0)
        assert torch.equal(W_hat != 0, mask), name
        assert torch.allclose(W_hat, lstsq_rows(W, X, mask), rtol=1e-3, atol=1e-3), name


def test_survivors_equal_lstsq_of_the_damped_problem():
    """The default damping λ = 0.01 · mean(diag H) (method.md §2) is ridge towards w̄: the same lstsq with √λ I rows."""
    W, X, H = layer_problem(rows=12, cols=64, tokens=512)
    lam = 0.01 * torch.diag(H).mean().item()
    for name, mask in masks(W, X).items():
        expected = lstsq_rows(W, X, mask, lam=lam, c=2 / X.shape[0])  # H = 2 XᵀX / n
        assert torch.allclose(refit.solve(W, H, mask), expected, rtol=1e-3, atol=1e-3), name


def test_refit_lowers_the_output_error_of_any_mask():
    W, X, H = layer_problem()
    for name, mask in masks(W, X).items():
        assert output_error(W, refit.solve(W, H, mask), X) < 0.9 * output_error(W, W * mask, X), name


def test_rows_of_every_count_are_solved_in_batches_within_the_chunk(monkeypatch):
    """A per-matrix mask spreads row counts from 1 to d_in: each batched system stays within CHUNK elements (a lone
    row may exceed it), and the batching changes nothing in the answer."""
    W, X, H = layer_problem(rows=16, cols=48, tokens=512)
    keep = torch.arange(W.shape[1])[None, :] < torch.linspace(1, W.shape[1], W.shape[0]).round()[:, None]
    mask = keep[torch.randperm(W.shape[0], generator=torch.Generator().manual_seed(0))]  # rows in no order
    monkeypatch.setattr(refit, "CHUNK", 4 * 24**2)
    real, shapes = torch.linalg.cholesky_ex, []
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda A, upper=False: shapes.append(A.shape) or real(A, upper=upper))
    W_hat = refit.solve(W, H, mask)  # damped: undamped, the full rows' H_SS (cond ~1e8) is beyond fp32
    assert sum(c for c, _, _ in shapes) == W.shape[0]
    assert all(c * k * k <= refit.CHUNK or c == 1 for c, k, _ in shapes), shapes
    lam = 0.01 * torch.diag(H).mean().item()
    assert torch.allclose(W_hat, lstsq_rows(W, X, mask, lam=lam, c=2 / X.shape[0]), rtol=1e-3, atol=1e-3)


def test_dead_inputs_are_dropped_and_a_failed_cholesky_retries(caplog, monkeypatch):
    W, X, H = layer_problem(rows=8, cols=32, tokens=256)
    H[5, :], H[:, 5] = 0, 0  # input 5 never fires
    real, calls = torch.linalg.cholesky_ex, {"n": 0}

    def flaky(A, upper=False):
        calls["n"] += 1
        L, info = real(A, upper=upper)
        return (L, torch.ones_like(info)) if calls["n"] == 1 else (L, info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", flaky)
    W_hat = refit.solve(W, H, criteria.select(W.abs(), 0.5))
    assert "retrying" in caplog.text
    assert (W_hat[:, 5] == 0).all() and torch.isfinite(W_hat).all()


def test_exact_lr_in_a_run_lowers_the_final_error_for_every_criterion(windows):
    """refit=True on a tiny Llama: the criterion's masks, survivors refit, a lower error than the paper's LR."""
    from reconlib import reconstruct
    from reconlib.config import RunConfig
    from reconlib.models import tiny_model

    calib, _ = windows
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        runs = {}
        for flag in (False, True):
            config = RunConfig(model="tiny", n_calib=8, seq_len=32, batch_size=4, device="cpu", criterion=criterion,
                               refit=flag)
            runs[flag] = reconstruct.prune(tiny_model("llama"), config, calib, progress=False)
        assert runs[True].final_error < runs[False].final_error, criterion
        # the same masks where the inputs are the same: block 0, and every block for magnitude (weights alone)
        for i, masks in runs[True].masks.items():
            for name, mask in masks.items():
                if i == 0 or criterion == "magnitude":
                    assert torch.equal(mask, runs[False].masks[i][name]), (criterion, i, name)
        assert runs[True].sparsity == runs[False].sparsity


def test_refit_keeps_the_papers_keys():
    from reconlib.config import RunConfig

    assert RunConfig(refit=False).key() == RunConfig().key()
    assert RunConfig(refit=True).key() != RunConfig().key()
