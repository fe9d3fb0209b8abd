"""The two activation streams of method.md §1: x_sparse (x_i, through the pruned blocks 0..i-1) and
x_dense (x̄_i, through the original blocks). Both live on the CPU in fp32 beside a GPU; only the block
being processed visits the device, one batch at a time.

The dense stream depends only on the model and the windows, not on the run, so it can be shared: with a
`store` folder, each x̄_i is written once and read back by every later run of the same model and windows
(every run of a grid shares its test windows, and the runs of one seed their calibration windows).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from . import arch, atomic
from .evaluate import block_error


# the variables that switch the kernels torch dispatches to (the CPU's own ISA is read from torch)
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA", "MKL_CBWR")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on whatever device the run is (RunConfig.placement chooses); None: plain fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


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
        out[start:start + batch_size] = h.float()
    return out


def store_folder(root: Path, model_id: str, ids: torch.Tensor, batch_size: int, device: torch.device,
                 amp: torch.dtype | None) -> Path:
    """Where x̄_1..x̄_L of these windows live: keyed by everything that changes their bits, the kernels' ISA
    too (a recomputation under a switched ISA, as `records verify` runs, must not read the native stream), and
    on a CPU the thread count (a reduction split over 2 threads adds in another order than over 1: a 1-thread
    grid run that read a 2-thread notebook's stream would not reproduce from scratch at 1 thread)."""
    isa = [torch.backends.cpu.get_cpu_capability()] + [os.environ.get(k, "") for k in ISA_VARIABLES]
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    h = hashlib.sha256(f"{model_id}|{batch_size}|{device.type}|{amp}|{torch.__version__}|{isa}|{threads}|".encode())
    h.update(ids.contiguous().numpy().tobytes())
    return Path(root) / h.hexdigest()[:20]


class Streams:
    """x_sparse at the streams' position `pos`, and x̄_j for j ≥ pos, computed only when first asked for."""

    def __init__(self, x: torch.Tensor, store: Path | None = None):
        self.x_sparse, self.dense, self.pos, self.store = x, {0: x}, 0, store  # x_0 = x̄_0

    def x_dense(self, i: int, blocks_dense: dict, kwargs: list[dict], device, batch_size: int, amp=None):
        """x̄_i: from memory, from the store, or by pushing x̄_{i-1} through the dense block i-1."""
        for j in range(max(k for k in self.dense if k <= i), i):
            x = self._load(j + 1)
            if x is None:
                with on(device, blocks_dense[j]):
                    x = run([blocks_dense[j]], self.dense[j], [kwargs[j]], device, batch_size, amp)
                self._save(j + 1, x)
            self.dense[j + 1] = x
        return self.dense[i]

    def advance(self, block: nn.Module, blocks_dense: dict, kwargs: list[dict], device: torch.device,
                batch_size: int, amp: torch.dtype | None = None, n_error: int | None = None,
                x_next: torch.Tensor | None = None) -> tuple[float, float]:
        """x_{i+1} = g_i(m ⊙ w; x_i), x̄_{i+1} = g_i(w̄; x̄_i); returns the block error (method.md §4) over
        the first n_error sequences (the real calibration windows; self-generated ones are left out), and
        the same without position 0, whose massive activations weigh several times the mean (SmolLM2).
        x_next: x_{i+1} when already computed (the forward that chose a sequential LR block's masks)."""
        i = self.pos
        if x_next is not None:
            self.x_sparse = x_next
        else:
            with on(device, block):
                self.x_sparse = run([block], self.x_sparse, [kwargs[i]], device, batch_size, amp)
        x_dense = self.x_dense(i + 1, blocks_dense, kwargs, device, batch_size, amp)
        del self.dense[i]
        self.pos = i + 1
        y_dense, y_sparse = x_dense[:n_error], self.x_sparse[:n_error]
        return block_error(y_dense, y_sparse), block_error(y_dense[:, 1:], y_sparse[:, 1:])

    def _load(self, i: int) -> torch.Tensor | None:
        file = self.store / f"{i}.pt" if self.store else None
        return torch.load(file) if file is not None and file.is_file() else None

    def _save(self, i: int, x: torch.Tensor) -> None:
        if self.store is None:
            return
        atomic.write(self.store / f"{i}.pt", lambda part: torch.save(x, part))  # grid workers share the store
