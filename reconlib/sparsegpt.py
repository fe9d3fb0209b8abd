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

    Unstructured: in each block of `blocksize` columns, prune every entry whose score w² / [H⁻¹]_jj² is at or
    below the block's score at rank int(ratio · d_out · width) (0-based, ascending), ties included, as the
    SparseGPT and Wanda repositories do. N:M: in every `group` columns, keep the n_keep highest of each row.
    loss = Σ (w − q)² / [H⁻¹]_jj², the OBS estimate of the added error.
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

    # W_block holds a block of W's columns as rows, so the per-column sweep touches contiguous memory and costs
    # two kernels a column: err = (w · pruned) / [H⁻¹]_ii, then a rank-1 update.
    for start in range(0, d_in, blocksize):
        end = min(start + blocksize, d_in)
        H_inv_block = H_inv[start:end, start:end]
        d = torch.diag(H_inv_block)[:, None]       # (width, 1)
        W_block = W[:, start:end].T.contiguous()    # (width, d_out)
        err_block = torch.zeros_like(W_block)
        if group:
            keep_block = torch.ones_like(W_block, dtype=torch.bool)
            scale = torch.zeros_like(W_block)
        else:
            # A threshold, not a count: 4-bit weights tie often, and breaking ties by position would prune the
            # tied weights of the block's first columns and keep its last ones (4-7% more final error).
            S = (W_block / d).pow(2)
            keep_block = S > S.flatten().kthvalue(int(S.numel() * ratio) + 1).values
            scale = (~keep_block) / d               # 1/[H⁻¹]_ii where pruned, else 0
        for i in range(end - start):
            if group and i % group == 0:
                S = (W_block[i:i + group] / d[i:i + group]).pow(2)  # (M, d_out), the weights as updated so far
                keep_block[i:i + group].scatter_(0, S.topk(group - n_keep, dim=0, largest=False).indices, False)
                scale[i:i + group] = (~keep_block[i:i + group]) / d[i:i + group]
            torch.mul(W_block[i], scale[i], out=err_block[i])
            W_block[i:].addr_(H_inv_block[i, i:], err_block[i], alpha=-1)  # OBS: the error onto the later columns
        losses += err_block.pow(2).sum(0)
        W[:, start:end] = (W_block * keep_block).T  # exact zeros: w − [H⁻¹]_ii · w/[H⁻¹]_ii can leave a residue
        mask[:, start:end] = keep_block.T
        W[:, end:].addmm_(err_block.T, H_inv[start:end, end:], alpha=-1)
    return W, mask, losses.sum().item() / 2
