"""The SparseGPT solver (Frantar & Alistarh 2023; method.md §2): prune W column block by column block,
pushing each pruned weight's error onto the columns not yet processed (the OBS update).

Given H = 2 XᵀX / n from the layer's sparse-stream inputs, it minimises ‖W X − Ŵ X‖² over Ŵ with the
asked pattern, approximately, in one sweep. The survivors are modified.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def inverse_cholesky(H: torch.Tensor, percdamp: float = 0.01, tries: int = 6) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp · mean(diag H).

    A failed factorisation multiplies the damping by 10 and retries (logged), so a near-singular H from
    few calibration tokens never crashes a run.
    """
    d = H.shape[0]
    idx = torch.arange(d, device=H.device)
    for attempt in range(tries):
        damp = percdamp * 10**attempt
        Hd = H.clone()
        Hd[idx, idx] += damp * torch.mean(torch.diag(H))
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            H_inv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(H_inv, upper=True)
            if info == 0:
                return U, damp
        log.warning("SparseGPT: Cholesky failed with damping %.3g of mean(diag H); retrying with %.3g",
                    damp, damp * 10)
    raise RuntimeError(f"SparseGPT: H is not positive definite even with damping {damp} · mean(diag H)")


@torch.no_grad()
def solve(W: torch.Tensor, H: torch.Tensor, ratio: float, n_keep: int = 0, group: int = 0,
          blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Prune W (d_out, d_in) → (W with pruned entries zero and survivors updated, mask, loss).

    Unstructured: in each block of `blocksize` columns, prune int(ratio · d_out · width) entries with the
    lowest w² / [H⁻¹]_jj², one threshold over the block. N:M: in every `group` columns, keep the n_keep
    highest of each row. loss = Σ (w − q)² / [H⁻¹]_jj², the OBS estimate of the added error.
    """
    W = W.clone().float()
    H = H.clone().float()
    d_out, d_in = W.shape
    if group and d_in % group:
        raise ValueError(f"N:M with M={group} does not divide the input width {d_in}")
    if group:
        blocksize = max(group, blocksize - blocksize % group)  # an N:M group must not straddle two blocks
    dead = torch.diag(H) == 0  # inputs that never fire carry no information: drop their weights
    H[dead, dead] = 1
    W[:, dead] = 0
    H_inv, _ = inverse_cholesky(H, percdamp)
    mask = torch.ones_like(W, dtype=torch.bool)
    losses = torch.zeros(d_out, device=W.device)

    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = H_inv[i1:i2, i1:i2]
        m1 = torch.ones_like(W1, dtype=torch.bool)
        if not group:
            S = W1**2 / torch.diag(Hinv1)[None, :] ** 2  # (d_out, width)
            drop = S.flatten().topk(int(S.numel() * ratio), largest=False).indices
            m1.view(-1)[drop] = False
        for i in range(i2 - i1):
            if group and i % group == 0:
                S = W1[:, i:i + group] ** 2 / torch.diag(Hinv1)[i:i + group][None, :] ** 2  # (d_out, M)
                drop = S.topk(group - n_keep, dim=1, largest=False).indices
                m1[:, i:i + group].scatter_(1, drop, False)
            w, d = W1[:, i], Hinv1[i, i]
            q = w * m1[:, i]
            Q1[:, i] = q
            losses += (w - q) ** 2 / d**2
            err = (w - q) / d
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = m1
        W[:, i2:] -= Err1 @ H_inv[i1:i2, i2:]
    return W, mask, losses.sum().item() / 2
