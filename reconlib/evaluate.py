"""Reconstruction error (method.md §4) and perplexity (method.md §6)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def block_error(y_dense: torch.Tensor, y_sparse: torch.Tensor, chunk: int = 16) -> float:
    """Normalized error (1 / (N·T·d)) ‖g(w̄; x̄) − g(m ⊙ w; x)‖², both (N, T, d); chunked to bound memory."""
    total = 0.0
    for start in range(0, y_dense.shape[0], chunk):
        diff = y_dense[start:start + chunk] - y_sparse[start:start + chunk]
        total += diff.pow(2).sum(dtype=torch.float64).item()  # fp64 sum: ~1e7 terms per block
    return total / y_dense.numel()


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def perplexity(model, windows: torch.Tensor, batch_size: int = 0, progress: bool = True) -> float:
    """exp(mean token NLL) over windows (W, T); the first token of each window is context only.

    batch_size 0 picks one that keeps the logits under about 1 GB (Gemma's vocabulary is 262k).
    """
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(f"perplexity needs windows of shape (W, T) with W > 0, got {tuple(windows.shape)}")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and windows.shape[1] > context:
        raise ValueError(f"windows of {windows.shape[1]} tokens exceed the model's context of {context}: lower seq_len")
    if batch_size <= 0:
        batch_size = max(1, int(2**28 // (windows.shape[1] * model.config.vocab_size)))
    device = _device(model)
    nll, count = 0.0, 0
    bar = tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not progress, leave=False)
    for start in bar:
        ids = windows[start:start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()  # (B, T, V)
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
        bar.set_postfix(ppl=f"{math.exp(nll / count):.2f}")
    return math.exp(nll / count)
