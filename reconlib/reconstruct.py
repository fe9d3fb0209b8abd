"""The reconstruction engine (method.md §3): one driver for LR, BR, BR+GP and BR+GP+CR.

A scheme is a schedule of units (one block, or two adjacent blocks for CR) plus a choice of target:
- every block gets its masks from the criterion, on sparse-stream statistics, just before its first unit;
- LR stops there (epochs = 0); BR trains the unit's blocks by Adam towards g(w̄; x_sparse), BR+GP
  towards g(w̄; x_dense), the true dense activation at that depth;
- the streams advance one block at a time, always to the input of the next unit's first block, and the
  block's normalized error is recorded as they pass it.
"""
from __future__ import annotations

import copy
import ctypes
import functools
import math
import os
import shutil
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import arch, criteria, sparsegpt
from .config import RunConfig
from .streams import Streams, autocast, on, run
from .streams import store_folder as streams_store


@dataclass
class Result:
    block_error: list[float]                    # calibration error after each block (method.md §4)
    block_error_from1: list[float]              # the same without position 0 (massive activations)
    test_block_error: dict[str, list[float]]    # the same on held-out windows, per test set
    layer_sparsity: dict[str, float]            # "i.name" → achieved fraction of zeros
    sparsity: float                             # over all pruned layers
    unit_loss: list[float]                      # last-epoch training loss per unit (empty for LR)
    seconds: float
    peak_memory_mb: float
    masks: dict = field(default_factory=dict, repr=False)  # i → {name: bool mask (True = kept)}

    @property
    def final_error(self) -> float | None:
        return self.block_error[-1] if self.block_error else None  # None: no data, no curve (magnitude LR)


def schedule(scheme: str, L: int) -> list[tuple[int, ...]]:
    """Units in order. CR: L+1 windows {0}, {0,1}, …, {L-2, L-1}, {L-1} (method.md §3)."""
    if scheme != "br+gp+cr":
        return [(i,) for i in range(L)]
    if L < 2:
        raise ValueError(f"cross-block reconstruction (br+gp+cr) needs at least two blocks, the model has {L}: "
                         "use br+gp")
    return [(0,)] + [(t, t + 1) for t in range(L - 1)] + [(L - 1,)]


AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


def device_of(config: RunConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device, and the autocast dtype of the blocks' forward and backward (None: plain fp32). `auto` is bf16
    on a GPU and fp32 on a CPU, where bf16 matmuls are ~100× slower without AMX; an explicit dtype is honoured on
    either. The blocks' parameters, Adam's state and the streams stay fp32 whatever the dtype."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    dtype = ("bfloat16" if device.type == "cuda" else "float32") if config.dtype == "auto" else config.dtype
    return device, AUTOCAST[dtype]


def choose_masks(block, x_in: torch.Tensor, kwargs: dict, config: RunConfig, device,
                 amp=None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Masks for every linear of one block (on `device`), from its sparse-stream inputs x_in (method.md §2).
    Wanda and magnitude zero the pruned weights; SparseGPT also updates the survivors.

    config.sequential (SparseGPT's "true sequential"): one forward of all of x_in at once, each linear pruned
    as its input arrives, so o_proj's statistics see the pruned q/k/v, down_proj's the pruned gate/up; that
    forward's output is the pruned block's output, returned as x_out (CPU, fp32) for the stream. Otherwise
    the statistics come from the unpruned block in batches, every linear is pruned after, and x_out is None.
    """
    ratio, n_keep, group = config.pattern
    layers = arch.linears(block)
    masks = {}

    def prune_layer(name: str) -> None:
        layer = layers[name]
        W = layer.weight.data
        if config.criterion == "sparsegpt":
            W_new, mask, _ = sparsegpt.solve(W, stats.H(name), ratio, n_keep, group)
            layer.weight.data = W_new.to(W.dtype)
        else:
            col_sq = stats.col_sq[name] if stats else None
            S = criteria.score(config.criterion, W.float(), col_sq)
            mask = criteria.select(S, ratio, n_keep, group, per_row=config.criterion == "wanda")
            layer.weight.data *= mask
        masks[name] = mask

    stats, x_out = None, None
    if config.criterion != "magnitude":
        stats = criteria.Stats(layers, hessian=config.criterion == "sparsegpt",
                               on_input=prune_layer if config.sequential else None)
        kw = arch.to(kwargs, device)
        with torch.no_grad():
            if config.sequential:  # one batch: every window's input must reach a linear before it is pruned
                with autocast(device, amp):
                    x_out = arch.run_block(block, x_in.to(device), kw).float().cpu()
            else:
                for start in range(0, x_in.shape[0], config.batch_size):
                    arch.run_block(block, x_in[start:start + config.batch_size].to(device), kw)
                    stats.flush()
        stats.remove()
    for name in layers:
        if name not in masks:
            prune_layer(name)
    return masks, x_out


def train(unit_blocks, masks: list[dict], x_sparse, target, kwargs: list[dict], config: RunConfig, device, amp,
          seed: int) -> float:
    """Adam on every parameter of the unit's blocks towards `target`, the forward using m ⊙ w.

    Masking the gradient is the same as differentiating through m ⊙ w; Adam then never moves a pruned
    entry (zero gradient, zero moments, zero step), so pruned weights stay exactly zero. method.md §3:
    lr decays linearly to 0, betas (0.9, 0.95), no weight decay, no clipping, reshuffle every epoch.
    Under fp16 autocast the loss is scaled (GradScaler, fp32 master weights): the gradient of a mean squared
    error over ~10⁵ elements is small enough to flush to zero in fp16, and a step on zero gradients would
    "succeed" without moving anything. bf16 has fp32's range and needs no scaling.
    """
    params = [p for b in unit_blocks for p in b.parameters()]
    for p in params:
        p.requires_grad_(True)
    handles = []
    for block, block_masks in zip(unit_blocks, masks):
        for name, layer in arch.linears(block).items():
            m = block_masks[name].to(device)
            handles.append(layer.weight.register_hook(lambda g, m=m: g * m))
    opt = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    n, bs = x_sparse.shape[0], config.batch_size
    total = config.train_epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total)
    gen = torch.Generator().manual_seed(seed)
    kwargs = [arch.to(kw, device) for kw in kwargs]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    try:
        for _ in range(config.train_epochs):
            perm, epoch_loss = torch.randperm(n, generator=gen), 0.0
            for start in range(0, n, bs):
                idx = perm[start:start + bs]
                h, y_dense = x_sparse[idx].to(device), target[idx].to(device)
                with autocast(device, amp):
                    for block, kw in zip(unit_blocks, kwargs):
                        h = arch.run_block(block, h, kw)
                loss = F.mse_loss(h.float(), y_dense)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)  # unscales first; skips the step (and lowers the scale) on an inf or nan
                scaler.update()
                sched.step()
                epoch_loss += loss.item() * len(idx)
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(False)
    with torch.no_grad():
        for block, block_masks in zip(unit_blocks, masks):
            for name, layer in arch.linears(block).items():
                layer.weight.mul_(block_masks[name].to(device))
    return epoch_loss / n


CHECKPOINT_EVERY = 120.0  # seconds between checkpoints (at unit boundaries); a 7B unit takes minutes


def prune(model, config: RunConfig, calib: torch.Tensor, test: dict[str, torch.Tensor] | None = None,
          extra: torch.Tensor | None = None, progress: bool = True, store: Path | None = None,
          model_id: str | None = None, checkpoint: Path | None = None, blocks=None) -> Result:
    """Prune and reconstruct `model` in place, block by block (method.md §1–4).

    calib: (n, T) real calibration windows; they alone feed the mask statistics and the reported error.
    extra: (k, T) self-generated windows, added to the real ones for reconstruction only (method.md §5).
    test: {name: (W, T)} held-out windows, propagated through both models for the test error.
    store, model_id: a folder where the dense stream of these windows through the model called `model_id` is
    kept for later runs (streams.py); the numbers are the same with and without it.
    checkpoint: a folder for this run's state at unit boundaries (every CHECKPOINT_EVERY seconds): the same
    call after a kill resumes there and ends with the same numbers, bit for bit; removed when the run ends.
    blocks: a lazy.Blocks, for a model whose blocks are on the meta device: each is read before its first unit
    and written out (then dropped) once the streams have passed it.
    """
    if blocks is not None and checkpoint is not None:
        raise ValueError("a block-by-block run writes its blocks as it goes and cannot resume from a checkpoint: "
                         "pass one of blocks and checkpoint")
    start_time = time.perf_counter()
    device, amp = device_of(config)
    keep_freed_memory()
    layers = arch.blocks(model)
    L = len(layers)
    units = schedule(config.recon, L)
    _, _, group = config.pattern
    if group:
        for i, block in enumerate(layers):
            for name, layer in arch.linears(block).items():
                criteria.check_group(layer.weight, group, f"block {i} {name}")
    model.requires_grad_(False)
    reset_peak_memory(device)
    if len(calib) == 0:  # magnitude LR without data (config.validate allows no other): the weights alone
        return _prune_weights(layers, config, blocks, start_time, device)
    n_real = calib.shape[0]
    ids = calib if extra is None or len(extra) == 0 else torch.cat([calib, extra])
    x, kwargs = arch.capture(model, ids, config.batch_size)

    def streams(x, windows):
        folder = store and streams_store(store, model_id or config.model, windows, config.batch_size, device, amp)
        return Streams(x, folder)

    calib_streams = streams(x, ids)
    test_streams = {name: streams(arch.capture(model, w, config.batch_size)[0], w) for name, w in (test or {}).items()}
    result = Result([], [], {name: [] for name in test_streams}, {}, 0.0, [], 0.0, 0.0)
    dense = {}  # i → w̄_i, a copy kept until the streams pass block i
    pos = 0     # the streams hold the inputs of block `pos`
    args = (dense, kwargs, device, config.batch_size, amp)
    all_streams = {"calib": calib_streams, **{f"test.{k}": v for k, v in test_streams.items()}}
    first, pos, saved = _resume(checkpoint, layers, dense, all_streams, result) if checkpoint else (0, 0, 0.0)
    start_time -= saved
    last_save = time.perf_counter()

    ready = {}  # i → x_{i+1}, from the forward that chose block i's masks (sequential LR)

    def advance():
        nonlocal pos
        error, error_from1 = calib_streams.advance(layers[pos], *args, n_error=n_real, x_next=ready.pop(pos, None))
        result.block_error.append(error)
        result.block_error_from1.append(error_from1)
        for name, s in test_streams.items():
            result.test_block_error[name].append(s.advance(layers[pos], *args)[0])
        del dense[pos]
        for name, layer in arch.linears(layers[pos]).items():  # block pos is final now
            result.layer_sparsity[f"{pos}.{name}"] = (layer.weight == 0).sum().item() / layer.weight.numel()
        if blocks is not None:  # written out: its zeros are its mask, and a 7B model's masks alone are 6.5 GB
            blocks.done(pos)
            result.masks[pos] = {}
        pos += 1

    bar = tqdm(units, desc=f"{config.criterion} {config.sparsity} {config.recon}", disable=not progress,
               initial=first)
    for t, unit in enumerate(units[first:], start=first):
        while pos < unit[0]:
            advance()
        if checkpoint and t > first and time.perf_counter() - last_save >= CHECKPOINT_EVERY:
            _save(checkpoint, t, pos, layers, dense, all_streams, result, time.perf_counter() - start_time)
            last_save = time.perf_counter()
        unit_blocks = [layers[i] for i in unit]
        for i in unit:
            if blocks is not None and i not in result.masks:
                blocks.load(i)  # read from its shards before it visits the device
        with on(device, *unit_blocks):
            for j, i in enumerate(unit):
                if i in result.masks:
                    continue
                dense[i] = copy.deepcopy(layers[i])
                # the sparse-stream input of block i: through the unit's earlier (already pruned) blocks
                x_in = run(unit_blocks[:j], calib_streams.x_sparse[:n_real], [kwargs[k] for k in unit[:j]],
                           device, config.batch_size, amp)
                result.masks[i], x_out = choose_masks(layers[i], x_in, kwargs[i], config, device, amp)
                if x_out is not None and not config.train_epochs and len(x_out) == len(calib_streams.x_sparse):
                    ready[i] = x_out  # LR leaves the block as that forward saw it
            if config.train_epochs:
                if "gp" in config.recon:  # g(w̄; x̄): the dense stream at the unit's end
                    target = calib_streams.x_dense(unit[-1] + 1, *args)
                else:                     # g(w̄; x): the dense unit on the sparse stream
                    with on(device, *(dense[i] for i in unit)):
                        target = run([dense[i] for i in unit], calib_streams.x_sparse, [kwargs[i] for i in unit],
                                     device, config.batch_size, amp)
                loss = train(unit_blocks, [result.masks[i] for i in unit], calib_streams.x_sparse, target,
                             [kwargs[i] for i in unit], config, device, amp, seed=config.seed * 100003 + t)
                result.unit_loss.append(loss)
                bar.set_postfix(loss=f"{loss:.3g}")
        bar.update()
    bar.close()
    while pos < L:
        advance()
    if checkpoint:
        shutil.rmtree(checkpoint, ignore_errors=True)

    return _finish(result, layers, start_time, device)


def _prune_weights(layers, config: RunConfig, blocks, start_time: float, device) -> Result:
    """Magnitude LR without calibration windows: no forward at all, and so no error curve."""
    result = Result([], [], {}, {}, 0.0, [], 0.0, 0.0)
    for i, block in enumerate(layers):
        if blocks is not None:
            blocks.load(i)
        with torch.no_grad():
            result.masks[i], _ = choose_masks(block, None, {}, config, device)
        for name, layer in arch.linears(block).items():
            result.layer_sparsity[f"{i}.{name}"] = (layer.weight == 0).sum().item() / layer.weight.numel()
        if blocks is not None:
            blocks.done(i)
            result.masks[i] = {}
    return _finish(result, layers, start_time, device)


def _finish(result: Result, layers, start_time: float, device) -> Result:
    sizes = {f"{i}.{name}": layer.weight.numel() for i, block in enumerate(layers)
             for name, layer in arch.linears(block).items()}
    result.sparsity = sum(round(result.layer_sparsity[k] * n) for k, n in sizes.items()) / sum(sizes.values())
    result.masks = {i: {k: v.cpu() for k, v in m.items()} for i, m in result.masks.items()}
    result.seconds = time.perf_counter() - start_time
    result.peak_memory_mb = peak_memory_mb(device)
    return result


def _save(folder: Path, t: int, pos: int, layers, dense: dict, streams: dict, result: Result, elapsed: float):
    """The run's state before unit t: blocks the streams have passed are final and written once each; the rest
    (blocks in flight, their dense copies, the streams, the results so far) is rewritten each time."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(pos):
        if not (folder / f"block{i}.pt").is_file():
            _atomic_save(layers[i].state_dict(), folder / f"block{i}.pt")
    state = {"t": t, "pos": pos, "elapsed": elapsed, "result": result.__dict__,
             "blocks": {i: layers[i].state_dict() for i in result.masks if i >= pos},
             "dense": {i: b.state_dict() for i, b in dense.items()},
             "streams": {k: (s.x_sparse, s.dense, s.pos) for k, s in streams.items()}}
    _atomic_save(state, folder / "state.pt")


def _resume(folder: Path, layers, dense: dict, streams: dict, result: Result) -> tuple[int, int, float]:
    """Load what _save wrote (nothing there: start at unit 0) → (first unit, stream position, seconds spent)."""
    if not (folder / "state.pt").is_file():
        return 0, 0, 0.0
    state = torch.load(folder / "state.pt", weights_only=False)
    for i in range(state["pos"]):
        layers[i].load_state_dict(torch.load(folder / f"block{i}.pt"))
    for i, sd in state["blocks"].items():
        layers[i].load_state_dict(sd)
    for i, sd in state["dense"].items():
        dense[i] = copy.deepcopy(layers[i])
        dense[i].load_state_dict(sd)
    for k, (x_sparse, x_dense, pos) in state["streams"].items():
        streams[k].x_sparse, streams[k].dense, streams[k].pos = x_sparse, x_dense, pos
    result.__dict__.update(state["result"])
    return state["t"], state["pos"], state["elapsed"]


def _atomic_save(obj, file: Path) -> None:
    part = file.with_suffix(".part")
    torch.save(obj, part)
    os.replace(part, file)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel (once per process).

    Every stream batch, block output and activation here is tens to hundreds of MB, above glibc's largest mmap
    threshold (32 MB): by default each is a fresh mmap, faulted in page by page and unmapped on free. On 2
    threads that fault churn cost a sequential LR run of SmolLM2 over a quarter of its wall time (41.9 → 30.6 s,
    mostly system time). Heap memory instead is reused; the price is that the process keeps its peak RSS until it
    exits, or until reset_peak_memory trims it. A no-op off glibc (macOS, musl): returns whether it took effect.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA's counter, or on Linux the process's RSS high-water mark, so that a run
    inside a long-lived notebook kernel reports its own peak rather than the kernel's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    if keep_freed_memory():  # hand back what earlier runs freed and keep_freed_memory kept, so it is not counted
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5 = reset VmHWM to the current RSS (Linux ≥ 4.0)
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated; CPU: the process's peak RSS since reset_peak_memory (or since it started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
