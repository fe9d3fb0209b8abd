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

    One k-sized Cholesky solve per row that keeps k columns: Σ k³/3 flops, ~125 GFLOP a SmolLM2 block at 50% (the
    OBS form on the pruned side saves at most 13% on these masks, and loses digits where H is ill-conditioned).
    A failed Cholesky raises the damping tenfold and retries (logged), as SparseGPT does.
    """
    for attempt in range(tries):
        damp = percdamp * 10**attempt
        W_bar, H_d = damped(W, H, damp)
        out, ok = _sub_solve(H_d, mask, W_bar @ H_d)  # (H + λI)_SS ŵ_S = ((H + λI) w̄)_S, row by row
        if ok:
            return out
        log.warning("refit: Cholesky failed with damping %.3g of mean(diag H); retrying with %.3g", damp, damp * 10)
    raise RuntimeError(f"refit: H is not positive definite even with damping {damp} · mean(diag H)")


def _sub_solve(A_full: torch.Tensor, sets: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Row r: solve A_full[S_r, S_r] x = rhs[r, S_r] for S_r = sets[r] → (x scattered into zeros (rows, d), ok).

    Rows are taken in order of |S_r| and batched, each batch padded to its largest |S| with identity equations
    (solution 0), so little of it is padding. A batch grows while rows × (its last, largest |S|)² stays within
    CHUNK: sized from its first row instead, one batch of a per-layer mask (row counts spread widely) took most of
    the layer padded to its largest row, 2.3× the flops and a 3 GiB system on SmolLM2 (issue 39)."""
    rows_all, d = sets.shape
    out = torch.zeros(rows_all, d, device=A_full.device)
    kept = sets.sum(1)
    counts, order = torch.sort(kept.clamp(min=1))
    start = 0
    while start < rows_all:
        size = torch.arange(1, rows_all - start + 1, device=counts.device) * counts[start:] ** 2  # ascending
        rows = order[start:start + max(1, int((size <= CHUNK).sum()))]
        k = int(counts[start + len(rows) - 1])
        m = sets[rows]
        cols = torch.argsort((~m).to(torch.int8), dim=1, stable=True)[:, :k]  # the set's columns first  (c, k)
        A = torch.empty(len(rows), k, k, device=A_full.device)
        for r, (c, n) in enumerate(zip(cols, kept[rows].tolist())):  # two index_selects beat a 2-D gather 1.5x
            torch.index_select(A_full.index_select(0, c), 1, c, out=A[r])
            if n < k:  # the padding: identity equations, row by row (a (c, k, k) mask cost 16% of the solve)
                A[r, n:].zero_()
                A[r, :, n:].zero_()
                A[r, n:, n:].fill_diagonal_(1)
        real = torch.gather(m, 1, cols)                                         # False on the padding (c, k)
        b = torch.gather(rhs[rows], 1, cols).mul_(real)[..., None]             # (c, k, 1)
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            return out, False
        # two triangular solves: 7x faster than cholesky_solve's batched path on CPU at k = 768
        x = torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, b, upper=False), upper=True)
        out[rows] = torch.zeros(len(rows), d, device=A_full.device).scatter_(1, cols, x[..., 0] * real)
        start += len(rows)
    return out, True


def loss(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """½ Σ_r (w̄_r − ŵ_r)ᵀ H (w̄_r − ŵ_r): the output error the solve minimises, in SparseGPT's units."""
    D = (W.float() - W_hat.float())
    return 0.5 * (D @ H.float() * D).sum().item()
