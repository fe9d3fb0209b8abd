"""The exact layer-wise solve (issue 39): for a fixed mask, each output row's surviving weights refit by least
squares to the dense layer's output on the same sparse-stream inputs.

Row r of W with kept columns S_r: minimise ‖X w̄_r − X_S ŵ_S‖² + λ‖w̄_S − ŵ_S‖², i.e.
    (H + λI)_SS ŵ_S = (H + λI)_S: w̄_r,        H ∝ XᵀX (the statistics SparseGPT accumulates),
with SparseGPT's damping λ = 0.01 · mean(diag H) and dead inputs (H_jj = 0: H_jj ← 1, W[:, j] ← 0), method.md §2.
The damped problem is SparseGPT's own: its OBS sweep approximates this solve column by column, Wanda and
magnitude leave w̄_S as it is. So the LR that `refit=True` measures is the best any layer-wise method can do
for the criterion's mask.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

CHUNK = 1 << 24  # elements of the batched (rows, k, k) systems solved at once: 64 MB in fp32


def damped(W: torch.Tensor, H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, H + λI) in fp32 after the dead-input rule of method.md §2."""
    W, H = W.clone().float(), H.clone().float()
    dead = torch.diag(H) == 0  # inputs that never fire carry no information: drop their weights
    H[dead, dead] = 1
    W[:, dead] = 0
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += percdamp * torch.mean(torch.diag(H))
    return W, H


@torch.no_grad()
def solve(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, percdamp: float = 0.01, tries: int = 6) -> torch.Tensor:
    """W (d_out, d_in) → the exact least-squares survivors on `mask` (bool, True = kept), zeros elsewhere.

    Rows keep different numbers of columns (magnitude and SparseGPT choose per matrix or per block), so each
    chunk of rows is padded to its largest kept count k with pruned columns whose equations are the identity
    (solution 0). A failed Cholesky raises the damping tenfold and retries (logged), as SparseGPT does.
    """
    d_out, d_in = W.shape
    for attempt in range(tries):
        damp = percdamp * 10**attempt
        W_bar, H_d = damped(W, H, damp)
        B = W_bar @ H_d  # (d_out, d_in): row r is ((H + λI) w̄_r)ᵀ, H symmetric
        out = torch.zeros_like(W_bar)
        k_max = max(int(mask.sum(1).max()), 1)
        rows = max(1, CHUNK // (k_max * k_max))
        failed = False
        for start in range(0, d_out, rows):
            m = mask[start:start + rows]
            k = max(int(m.sum(1).max()), 1)
            cols = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :k]  # kept columns first  (c, k)
            real = torch.gather(m, 1, cols)                                        # False on the padding (c, k)
            both = real[:, :, None] & real[:, None, :]
            A = torch.where(both, H_d[cols[:, :, None], cols[:, None, :]], 0.0)   # (c, k, k)
            A = A + torch.diag_embed((~real).float())
            b = torch.where(real, torch.gather(B[start:start + rows], 1, cols), 0.0)  # (c, k)
            L, info = torch.linalg.cholesky_ex(A)
            if bool((info != 0).any()):
                failed = True
                break
            x = torch.cholesky_solve(b[..., None], L)[..., 0]                     # (c, k)
            out[start:start + rows].scatter_(1, cols, torch.where(real, x, 0.0))
        if not failed:
            return out
        log.warning("refit: Cholesky failed with damping %.3g of mean(diag H); retrying with %.3g", damp, damp * 10)
    raise RuntimeError(f"refit: H is not positive definite even with damping {damp} · mean(diag H)")


def loss(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """½ Σ_r (w̄_r − ŵ_r)ᵀ H (w̄_r − ŵ_r): the output error the solve minimises, in SparseGPT's units."""
    D = (W.float() - W_hat.float())
    return 0.5 * (D @ H.float() * D).sum().item()
