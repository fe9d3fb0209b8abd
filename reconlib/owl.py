"""OWL's non-uniform block sparsity (Yin et al., ICML 2024, "Outlier Weighed Layerwise Sparsity", arXiv 2310.05175;
github.com/luuyin/OWL lib/prune_all.py; llm-compressor's `SparseGPTModifier(sparsity_profile="owl", owl_m, owl_lmbda)`).

Block i's outlier ratio D_i is the share of the entries A_jk = |W_jk| · ‖X_k‖₂ (Wanda's score, over all the block's
linears together, on the **dense** model's calibration activations, as OWL's first pass) above M · mean(A). Then
    r_i = 2λ (D_i − min D) / (max D − min D),     s_i = s − (r_i − mean r),
so the blocks with more outliers are pruned less, the spread max s_i − min s_i is 2λ, and the unweighted mean of
s_i over the blocks is s (OWL and llm-compressor average over blocks; every block of these models has the same
number of prunable weights, so it is also the mean over weights). Defaults: OWL's README for 70% unstructured,
M = 5, λ = 0.08 (llm-compressor's test uses M = 5, λ = 0.05).
"""
from __future__ import annotations

import torch

from . import arch, criteria
from .streams import autocast, on

M, LAMBDA = 5.0, 0.08


def outlier_ratio(scores: list[torch.Tensor], m: float = M) -> float:
    """The share of one block's scores A (every linear's, flattened together) above m · mean(A)."""
    A = torch.cat([s.flatten().float() for s in scores])
    return (A > m * A.mean()).float().mean().item()


def allocate(ratios: list[float], target: float, lmbda: float = LAMBDA) -> list[float]:
    """Each block's sparsity from its outlier ratio (the formula above); uniform when all ratios are equal."""
    D = torch.tensor(ratios, dtype=torch.float64)
    spread = D.max() - D.min()
    r = 2 * lmbda * (D - D.min()) / spread if spread > 0 else torch.zeros_like(D)
    return (target - (r - r.mean())).tolist()


@torch.no_grad()
def block_ratios(layers, x: torch.Tensor, kwargs: list[dict], device, batch_size: int, amp=None,
                 m: float = M) -> list[float]:
    """Every block's outlier ratio, from one forward of the calibration windows x (block 0's input, CPU) through
    the dense blocks: OWL's pre-pass, before any block is pruned."""
    ratios = []
    for i, block in enumerate(layers):
        linears = arch.linears(block)
        stats = criteria.Stats(linears, hessian=False)
        kw = arch.to(kwargs[i], device)
        outs = []
        with on(device, block):
            for start in range(0, x.shape[0], batch_size):
                with autocast(device, amp):
                    outs.append(arch.run_block(block, x[start:start + batch_size].to(device), kw).float().cpu())
                stats.flush()
            stats.remove()
            ratios.append(outlier_ratio([criteria.score("wanda", lin.weight.float(), stats.col_sq[name])
                                         for name, lin in linears.items()], m))
        x = torch.cat(outs)  # (N, T, d): the dense stream into block i + 1
    return ratios
