"""The two activation streams of method.md §1: x_sparse (x_i, through the pruned blocks 0..i-1) and
x_dense (x̄_i, through the original blocks). Both live on the CPU in fp32 beside a GPU; only the block
being processed visits the device, one batch at a time."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from . import arch
from .evaluate import block_error


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on a GPU; plain fp32 on the CPU, where bf16 matmuls run ~100× slower."""
    if device.type == "cuda" and dtype not in (None, torch.float32):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@contextlib.contextmanager
def on(device: torch.device, *modules: nn.Module):
    """Move modules to the compute device for the duration, then back to the CPU."""
    for m in modules:
        m.to(device)
    try:
        yield modules
    finally:
        if device.type != "cpu":
            for m in modules:
                m.to("cpu")


@torch.no_grad()
def run(blocks: list[nn.Module], x: torch.Tensor, kwargs: list[dict], device: torch.device,
        batch_size: int, amp: torch.dtype | None = None) -> torch.Tensor:
    """Push x (N, T, d) through a chain of blocks (already on `device`) → (N, T, d) on the CPU, fp32."""
    if not blocks:
        return x
    kwargs = [arch.to(kw, device) for kw in kwargs]
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], batch_size):
        h = x[start:start + batch_size].to(device)
        with autocast(device, amp):
            for block, kw in zip(blocks, kwargs):
                h = arch.run_block(block, h, kw)
        out[start:start + batch_size] = h.float().cpu()
    return out


@dataclass
class Streams:
    x_sparse: torch.Tensor  # (N, T, d): x_i
    x_dense: torch.Tensor   # (N, T, d): x̄_i

    def advance(self, block: nn.Module, block_dense: nn.Module, kwargs: dict, device: torch.device,
                batch_size: int, amp: torch.dtype | None = None, n_error: int | None = None) -> float:
        """x_{i+1} = g_i(m ⊙ w; x_i), x̄_{i+1} = g_i(w̄; x̄_i); returns the block error (method.md §4) over
        the first n_error sequences (the real calibration windows; self-generated ones are left out)."""
        with on(device, block, block_dense):
            self.x_sparse = run([block], self.x_sparse, [kwargs], device, batch_size, amp)
            self.x_dense = run([block_dense], self.x_dense, [kwargs], device, batch_size, amp)
        return block_error(self.x_dense[:n_error], self.x_sparse[:n_error])
