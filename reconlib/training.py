"""Reconstruction of one unit (method.md §3): Adam on the unit's surviving weights towards its target, and, with
held-out windows, the unit's train and held-out error after every epoch and the early stop they allow."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from . import arch
from .config import RunConfig
from .evaluate import block_error
from .streams import autocast, run


def train(unit_blocks, masks: list[dict], x_sparse, target, kwargs: list[dict], config: RunConfig, device, amp,
          seed: int, heldout: tuple | None = None) -> tuple[float, dict | None]:
    """Adam on every parameter of the unit's blocks towards `target`, the forward using m ⊙ w.

    Masking the gradient is the same as differentiating through m ⊙ w; Adam then never moves a pruned
    entry (zero gradient, zero moments, zero step), so pruned weights stay exactly zero. method.md §3:
    lr decays linearly to 0, betas (0.9, 0.95), no weight decay, no clipping, reshuffle every epoch.
    Under fp16 autocast the loss is scaled (GradScaler, fp32 master weights): the gradient of a mean squared
    error over ~10⁵ elements is small enough to flush to zero in fp16, and a step on zero gradients would
    "succeed" without moving anything. bf16 has fp32's range and needs no scaling.

    heldout: (x_sparse, target) of the held-out windows. The unit's error on the trained and on the held-out
    windows is then measured before the first step and after every epoch (the curve returned, else None); with
    config.early_stop the unit ends with the weights of the point of lowest held-out error. The held-out
    windows only ever pass through a no-grad forward: no gradient, no Adam state, no effect on the shuffling.
    → (the last epoch's mean loss, the curve)
    """
    params = [p for b in unit_blocks for p in b.parameters()]
    for p in params:
        p.requires_grad_(True)
    handles = []
    pruned = [(param, mask.to(device)) for block, block_masks in zip(unit_blocks, masks)
              for param, mask in arch.param_masks(block, block_masks)]  # fused experts: one mask per 3-D parameter
    for param, m in pruned:
        handles.append(param.register_hook(lambda g, m=m: g * m))
    opt = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    n, bs = x_sparse.shape[0], config.batch_size
    total = config.train_epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total)
    gen = torch.Generator().manual_seed(seed)
    kwargs = [arch.to(kw, device) for kw in kwargs]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    curve, best = None, None
    if heldout is not None:
        curve = {"train": [], "heldout": [], "stop": 0, "seconds": 0.0}

        def measure():
            nonlocal best
            started = time.perf_counter()
            for key, (x, y) in (("train", (x_sparse, target)), ("heldout", heldout)):
                curve[key].append(block_error(y, run(unit_blocks, x, kwargs, device, bs, amp)))
            if curve["heldout"][-1] < curve["heldout"][curve["stop"]] or len(curve["heldout"]) == 1:
                curve["stop"] = len(curve["heldout"]) - 1
                if config.early_stop:  # a copy of the weights at the best point so far
                    best = [{k: v.detach().clone() for k, v in b.state_dict().items()} for b in unit_blocks]
            curve["seconds"] += time.perf_counter() - started

        measure()
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
            if curve is not None:
                measure()
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(False)
    if best is not None and curve["stop"] < config.train_epochs:  # stop early: back to the best point
        for block, state in zip(unit_blocks, best):
            block.load_state_dict(state)
    with torch.no_grad():
        for param, m in pruned:
            param.mul_(m)
    return epoch_loss / n, curve
