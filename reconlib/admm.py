"""ADMM pruning (Boža 2024, "Fast and Effective Weight Update for Pruned Large Language Models", arXiv 2401.02938;
github.com/fmfi-compbio/admm-pruning): the mask and the weights chosen together, as a criterion.

It splits min ‖X w̄ − X w‖² s.t. w sparse into a least-squares step on W and a projection Z onto the mask:
    Z = (W + U) ⊙ M,   U ← U + W − Z,   W = (XᵀX + ρI)⁻¹ (XᵀX W̄ + ρ (Z − U)),
in coordinates normalised by ‖X_j‖ (so XᵀX has a unit diagonal and |W + U| is a Wanda-like score), with
(XᵀX + ρI)⁻¹ computed once. Over the first `prune_iters` iterations the mask is re-chosen from |W + U| at a
sparsity that rises on a cubic schedule, s_t = s − s (1 − (t+1)/prune_iters)³, as the paper's gradual pruning.
At the end the mask is fixed and the survivors are the exact least-squares solve on it (refit.py), where the
reference returns Z after 20 iterations: the same limit, reached exactly.
"""
from __future__ import annotations

import torch

from . import criteria, refit

# The reference's defaults (lib/prune.py, lib/admm.py): 20 iterations, the first 15 re-choosing the mask, ρ = 1,
# and XᵀX damped by 0.1 · mean(diag) (= 0.1 once normalised) inside the iterations.
ITERS, PRUNE_ITERS, RHO, PERCDAMP = 20, 15, 1.0, 0.1


def select(S: torch.Tensor, ratio: float, n_keep: int = 0, group: int = 0, final: bool = True) -> torch.Tensor:
    """The mask at sparsity `ratio` from scores S, per matrix as the reference. N:M on the way (final=False):
    each group's n_keep best are kept, and as many of the rest as the schedule's ratio still allows."""
    if not group:
        return criteria.select(S, ratio)
    keep = criteria.select(S, 0.0, n_keep, group)
    if final:  # exactly N:M, without rounding int(size · (1 − N/M))
        return keep
    return criteria.select(S.masked_fill(keep, float("inf")), ratio)


@torch.no_grad()
def solve(W: torch.Tensor, H: torch.Tensor, ratio: float, n_keep: int = 0, group: int = 0, iters: int = ITERS,
          rho: float = RHO, prune_iters: int = PRUNE_ITERS) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Prune W (d_out, d_in) → (survivors refit exactly, mask, loss) from H ∝ XᵀX, as sparsegpt.solve."""
    if group:
        criteria.check_group(W, group)
    W_bar, H_d = refit.damped(W, H, 0.0)  # the dead-input rule; damping below, in normalised coordinates
    norm = torch.diag(H_d).sqrt()  # ‖X_j‖ (up to H's constant factor), 1 for dead inputs
    Hn = H_d / norm[:, None] / norm[None, :]  # (d_in, d_in), unit diagonal
    idx = torch.arange(Hn.shape[0], device=Hn.device)
    Hn[idx, idx] += PERCDAMP
    Wn = W_bar * norm[None, :]  # rows as W's: the reference works on Wᵀ
    XY = Wn @ Hn  # (d_out, d_in): row r is (XᵀX w̄_r)ᵀ
    Hn[idx, idx] += rho
    inv = torch.cholesky_inverse(torch.linalg.cholesky(Hn))  # symmetric: W = (XY + ρ(Z − U)) inv, row by row
    Wk, U = Wn.clone(), torch.zeros_like(Wn)
    mask = select(Wn.abs(), ratio, n_keep, group)
    for t in range(iters):
        if t < prune_iters:
            s_t = ratio - ratio * (1 - (t + 1) / prune_iters) ** 3
            mask = select((Wk + U).abs(), s_t, n_keep, group, final=t + 1 == prune_iters)
        Z = (Wk + U) * mask
        U += Wk - Z
        Wk = (XY + rho * (Z - U)) @ inv
    W_hat = refit.solve(W, H, mask)
    return W_hat, mask, refit.loss(W_bar, W_hat, H)
