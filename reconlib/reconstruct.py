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
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import admm, arch, checkpoints, criteria, guard, memory, moe, owl, refit, sparsegpt
from .clock import Clock
from .evaluate import window_error
from .training import train
from .config import RunConfig
from .streams import Streams, autocast, on, run
from .streams import store_folder as streams_store


@dataclass
class Result:
    block_error: list[float] = field(default_factory=list)        # calibration error after each block (method.md §4)
    block_error_from1: list[float] = field(default_factory=list)  # the same without position 0 (massive activations)
    test_block_error: dict[str, list[float]] = field(default_factory=dict)  # the same on test windows, per test set
    test_window_error: dict[str, list[float]] = field(default_factory=dict)  # the last block's, per test window
    holdout_block_error: list[float] = field(default_factory=list)  # the same on the held-out calibration windows
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # "i.name" → achieved fraction of zeros
    block_sparsity: list[float] = field(default_factory=list)     # the same over each block's linears together
    owl: dict = field(default_factory=dict)  # allocation owl: each block's outlier ratio and sparsity target
    sparsity: float = 0.0                                         # over all pruned layers
    unit_loss: list[float] = field(default_factory=list)          # last-epoch training loss per unit (empty for LR)
    unit_curves: list[dict] = field(default_factory=list)  # per unit with holdout: train / held-out error per epoch
    seconds: float = 0.0
    cpu_seconds: float = 0.0                                      # the same in the process's CPU time (clock.py)
    monitor_seconds: float = 0.0                                  # of which measuring the curves
    peak_memory_mb: float = 0.0
    masks: dict = field(default_factory=dict, repr=False)  # i → {name: bool mask (True = kept)}
    dense_kept: dict[str, str] = field(default_factory=dict)      # what is left dense on purpose, and why (guard.py)
    unrouted_experts: dict[str, str] = field(default_factory=dict)  # "i.name" → what was done to an expert no token reached

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


def choose_masks(block, x_in: torch.Tensor, kwargs: dict, config: RunConfig, device,
                 amp=None, unrouted: dict | None = None,
                 ratio: float | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Masks for every matrix of one block (on `device`), from its sparse-stream inputs x_in (method.md §2).
    Wanda and magnitude zero the pruned weights; SparseGPT and ADMM also update the survivors, and config.refit
    replaces the survivors by the exact least-squares solve on the mask (refit.py). ratio: the block's own
    unstructured sparsity (OWL), else the config's.

    config.sequential (SparseGPT's "true sequential"): one forward of all of x_in at once, each linear pruned
    as its input arrives, so o_proj's statistics see the pruned q/k/v, down_proj's the pruned gate/up; that
    forward's output is the pruned block's output, returned as x_out (CPU, fp32) for the stream. Otherwise
    the statistics come from the unpruned block in batches, every linear is pruned after, and x_out is None.
    An expert that no calibration token reaches has no statistics: it is pruned by magnitude, and `unrouted`
    (when given) gets its name and what was done.
    """
    ratio_config, n_keep, group = config.pattern
    ratio = ratio_config if ratio is None else ratio
    mats = arch.matrices(block)
    masks = {}

    def prune_layer(name: str) -> None:
        W = mats[name].W  # a view into the parameter: writing it writes the model
        seen = stats is None or name in stats.n
        if config.criterion == "sparsegpt" and seen:
            W_new, mask, _ = sparsegpt.solve(W, stats.H(name), ratio, n_keep, group)
        elif config.criterion == "admm" and seen:
            W_new, mask, _ = admm.solve(W, stats.H(name), ratio, n_keep, group, config.admm_iters, config.admm_rho,
                                        config.admm_prune_iters)
        else:
            S = criteria.score(config.criterion if seen and config.criterion != "admm" else "magnitude", W.float(),
                               stats.col_sq[name] if seen and stats and config.criterion == "wanda" else None)
            mask = criteria.select(S, ratio, n_keep, group, per_row=config.criterion == "wanda")
            W_new = W * mask
            if not seen and unrouted is not None:
                unrouted[name] = ("no calibration token was routed to this expert" if mats[name].expert is not None
                                  else "no calibration input reached it") + ": pruned by magnitude" + \
                                 (" per row" if config.criterion == "wanda" else "") + " at the same sparsity"
        if config.refit and seen:  # from w̄, not from the criterion's survivors: the solve's optimum does not depend on them
            W_new = refit.solve(W, stats.H(name), mask)
        W.copy_(W_new.to(W.dtype))
        masks[name] = mask

    stats, x_out = None, None
    if config.criterion != "magnitude" or config.refit:
        stats = criteria.Stats({n: m.module for n, m in mats.items() if m.module is not None},
                               hessian=config.criterion in ("sparsegpt", "admm") or config.refit,
                               on_input=prune_layer if config.sequential else None)
        routed = moe.RoutedInputs(block, stats)
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
        routed.remove()
    with torch.no_grad():
        for name in mats:
            if name not in masks:
                prune_layer(name)
    return masks, x_out


@dataclass
class Pass:
    """One pruning pass in flight: the blocks, the streams that walk them, and what is recorded so far. The
    streams hold the inputs of block `pos`; every block before it is final."""
    layers: list
    config: RunConfig
    device: torch.device
    amp: torch.dtype | None
    kwargs: list[dict]      # each block's recorded keyword arguments (arch.capture)
    calib: Streams          # the n_real calibration windows, then the extra (self-generated or more real) ones
    n_real: int
    test: dict              # test set → Streams
    holdout: Streams | None
    result: Result
    blocks: object = None   # a lazy.Blocks: blocks read before their first unit, written once final
    dense: dict = field(default_factory=dict)  # i → w̄_i, a copy kept until the streams pass block i
    lr_outputs: dict = field(default_factory=dict)  # i → x_{i+1}, from the forward that chose block i's masks (LR)
    ratios: list | None = None  # each block's unstructured sparsity (OWL), None: the config's for every block
    pos: int = 0

    @property
    def streams(self) -> dict:
        return {"calib": self.calib, **{f"test.{k}": v for k, v in self.test.items()},
                **({"holdout": self.holdout} if self.holdout else {})}

    def _stream_args(self) -> tuple:
        return self.dense, self.kwargs, self.device, self.config.batch_size, self.amp

    def advance(self) -> None:
        """Move every stream past block `pos`, recording its errors; the block is final from here on."""
        i, result = self.pos, self.result
        error, error_from1 = self.calib.advance(self.layers[i], *self._stream_args(), n_error=self.n_real,
                                                x_next=self.lr_outputs.pop(i, None))
        result.block_error.append(error)
        result.block_error_from1.append(error_from1)
        for name, s in self.test.items():
            result.test_block_error[name].append(s.advance(self.layers[i], *self._stream_args())[0])
            if s.pos == len(self.layers):  # the final error, window by window
                result.test_window_error[name] = window_error(s.dense[s.pos], s.x_sparse)
        if self.holdout:
            result.holdout_block_error.append(self.holdout.advance(self.layers[i], *self._stream_args())[0])
        del self.dense[i]
        _final(i, self.layers[i], self.config, result, self.ratios[i] if self.ratios else None)
        if self.blocks is not None:  # written out: its zeros are its mask, and a 7B model's masks alone are 6.5 GB
            self.blocks.done(i)
            result.masks[i] = {}
        self.pos = i + 1

    def target(self, s: Streams, unit: tuple) -> torch.Tensor:
        """What the unit is trained to output on the windows of `s`."""
        if "gp" in self.config.recon:  # g(w̄; x̄): the dense stream at the unit's end
            return s.x_dense(unit[-1] + 1, *self._stream_args())
        dense = [self.dense[i] for i in unit]
        with on(self.device, *dense):  # g(w̄; x): the dense unit on the sparse stream
            return run(dense, s.x_sparse, [self.kwargs[i] for i in unit], self.device, self.config.batch_size, self.amp)

    def unit(self, t: int, unit: tuple) -> float | None:
        """Unit t: masks for its blocks not yet pruned, then (BR and after) Adam → the last epoch's loss."""
        config, result, kwargs = self.config, self.result, self.kwargs
        unit_blocks = [self.layers[i] for i in unit]
        for i in unit:
            if self.blocks is not None and i not in result.masks:
                self.blocks.load(i)  # read from its shards before it visits the device
        with on(self.device, *unit_blocks):
            for j, i in enumerate(unit):
                if i in result.masks:
                    continue
                self.dense[i] = copy.deepcopy(self.layers[i])
                # the sparse-stream input of block i: through the unit's earlier (already pruned) blocks
                x_in = run(unit_blocks[:j], self.calib.x_sparse[:self.n_real], [kwargs[k] for k in unit[:j]],
                           self.device, config.batch_size, self.amp)
                unrouted = {}
                result.masks[i], x_out = choose_masks(self.layers[i], x_in, kwargs[i], config, self.device, self.amp,
                                                      unrouted, self.ratios[i] if self.ratios else None)
                result.unrouted_experts |= {f"{i}.{name}": what for name, what in unrouted.items()}
                if x_out is not None and not config.train_epochs and len(x_out) == len(self.calib.x_sparse):
                    self.lr_outputs[i] = x_out  # LR leaves the block as that forward saw it
            if not config.train_epochs:
                return None
            heldout = (self.holdout.x_sparse, self.target(self.holdout, unit)) if self.holdout else None
            loss, curve = train(unit_blocks, [result.masks[i] for i in unit], self.calib.x_sparse,
                                self.target(self.calib, unit), [kwargs[i] for i in unit], config, self.device,
                                self.amp, seed=config.seed * 100003 + t, heldout=heldout)
        result.unit_loss.append(loss)
        if curve:
            result.monitor_seconds += curve.pop("seconds")
            result.unit_curves.append({"blocks": list(unit), **curve})
        return loss


def prune(model, config: RunConfig, calib: torch.Tensor, test: dict[str, torch.Tensor] | None = None,
          extra: torch.Tensor | None = None, *, holdout: torch.Tensor | None = None, progress: bool = True,
          store: Path | None = None, model_id: str | None = None, checkpoint: Path | None = None,
          blocks=None) -> Result:
    """Prune and reconstruct `model` in place, block by block (method.md §1–4).

    calib: (n, T) real calibration windows; they alone feed the mask statistics and the reported error.
    extra: (k, T) self-generated windows, added to the real ones for reconstruction only (method.md §5).
    test: {name: (W, T)} test windows, propagated through both models for the test error.
    holdout: (h, T) held-out calibration windows, never trained on: propagated like the test windows, and each
    trained unit's error on them is measured every epoch (`train`), to stop it early with config.early_stop.
    store, model_id: a folder where the dense stream of these windows through the model called `model_id` is
    kept for later runs (streams.py); the numbers are the same with and without it.
    checkpoint: a folder for this run's state at unit boundaries (every checkpoint.EVERY seconds): the same
    call after a kill resumes there and ends with the same numbers, bit for bit. The finished pass is kept
    there too, for a kill in what the caller does next: the caller removes the folder (pipeline.compute).
    blocks: a lazy.Blocks, for a model whose blocks are on the meta device: each is read before its first unit
    and written out (then dropped) once the streams have passed it.
    """
    if blocks is not None and checkpoint is not None:
        raise ValueError("a block-by-block run writes its blocks as it goes and cannot resume from a checkpoint: "
                         "pass one of blocks and checkpoint")
    clock = Clock()
    device, amp = config.placement
    memory.keep_freed()
    layers = arch.blocks(model)
    kept = guard.refuse(model)  # a matrix reconlib cannot read stops the run here, before any work
    _, _, group = config.pattern
    if group:
        for i, block in enumerate(layers):
            for name, mat in arch.matrices(block).items():
                criteria.check_group(mat.W, group, f"block {i} {name}")
    model.requires_grad_(False)
    memory.reset_peak(device)
    if len(calib) == 0:  # magnitude LR without data (config.validate allows no other): the weights alone
        return _prune_weights(layers, config, blocks, clock, device, kept)
    ids = calib if extra is None or len(extra) == 0 else torch.cat([calib, extra])
    x, kwargs = arch.capture(model, ids, config.batch_size)

    def streams(windows, x=None):
        folder = store and streams_store(store, model_id or config.model, windows, config.batch_size, device, amp)
        return Streams(arch.capture(model, windows, config.batch_size)[0] if x is None else x, folder)

    test = {name: streams(w) for name, w in (test or {}).items()}
    state = Pass(layers, config, device, amp, kwargs, calib=streams(ids, x), n_real=len(calib), test=test,
                 holdout=streams(holdout) if holdout is not None and len(holdout) else None,
                 result=Result(test_block_error={name: [] for name in test}, dense_kept=kept), blocks=blocks)
    if config.allocation == "owl":  # from the dense blocks, before a checkpoint's pruned ones are loaded
        _allocate(state, x[:len(calib)])
    resume_at, spent = checkpoints.resume(checkpoint, state) if checkpoint else (0, (0.0, 0.0))
    clock.add(spent)
    last_save = time.perf_counter()
    units = schedule(config.recon, len(layers))
    bar = tqdm(units, desc=f"{config.criterion} {config.sparsity} {config.recon}", disable=not progress,
               initial=resume_at)
    for t, unit in enumerate(units[resume_at:], start=resume_at):
        while state.pos < unit[0]:
            state.advance()
        if checkpoint and t > resume_at and time.perf_counter() - last_save >= checkpoints.EVERY:
            checkpoints.save(checkpoint, state, t, clock.read())
            last_save = time.perf_counter()
        if (loss := state.unit(t, unit)) is not None:
            bar.set_postfix(loss=f"{loss:.3g}")
        bar.update()
    bar.close()
    while state.pos < len(layers):
        state.advance()
    if checkpoint and resume_at < len(units):  # the finished pass: a kill in the evaluation after it (a third of a
        # Gemma 3 run at 80 × 512 windows) resumes here; the caller removes it once its record is whole
        checkpoints.save(checkpoint, state, len(units), clock.read())
    return _finish(state.result, layers, clock, device)


def _prune_weights(layers, config: RunConfig, blocks, clock: Clock, device, kept: dict) -> Result:
    """Magnitude LR without calibration windows: no forward at all, and so no error curve."""
    result = Result(dense_kept=kept)
    for i, block in enumerate(layers):
        if blocks is not None:
            blocks.load(i)
        with torch.no_grad():
            result.masks[i], _ = choose_masks(block, None, {}, config, device)
        _final(i, block, config, result)
        if blocks is not None:
            blocks.done(i)
            result.masks[i] = {}
    return _finish(result, layers, clock, device)


def _allocate(state: Pass, x: torch.Tensor) -> None:
    """OWL: each block's sparsity from its outlier ratio on the dense model (owl.py)."""
    config = state.config
    if state.blocks is not None:
        raise ValueError("allocation='owl' reads every block's outliers before pruning the first, and a block-by-block "
                         "run holds one block at a time: drop --low-memory, or use allocation='uniform'")
    ratios = owl.block_ratios(state.layers, x, state.kwargs, state.device, config.batch_size, state.amp, config.owl_m)
    state.ratios = owl.allocate(ratios, config.pattern[0], config.owl_lambda)
    state.result.owl = {"outlier_ratio": ratios, "target": state.ratios}


def _final(i: int, block, config: RunConfig, result: Result, ratio: float | None = None) -> None:
    """Block i is final: its sparsity, counted from its parameters, one by one and together, and the guard
    (guard.py) on them at the block's own ratio (OWL's, else the config's)."""
    zeros = total = 0
    for key, (z, n) in arch.sparsity(block).items():
        result.layer_sparsity[f"{i}.{key}"] = z / n
        zeros, total = zeros + z, total + n
    result.block_sparsity.append(zeros / total)
    pattern = config.pattern
    guard.check(i, block, pattern if ratio is None else (ratio, *pattern[1:]))


def _finish(result: Result, layers, clock: Clock, device) -> Result:
    sizes = {f"{i}.{mat.key}": mat.param.numel() for i, block in enumerate(layers)  # shapes only: lazy blocks are on meta
             for mat in arch.matrices(block).values()}
    result.sparsity = sum(round(result.layer_sparsity[k] * n) for k, n in sizes.items()) / sum(sizes.values())
    result.masks = {i: {k: v.cpu() for k, v in m.items()} for i, m in result.masks.items()}
    result.seconds, result.cpu_seconds = clock.read()
    result.peak_memory_mb = memory.peak_mb(device)
    return result
