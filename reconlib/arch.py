"""The one architecture adapter: blocks g_0..g_{L-1}, block-0 inputs, and how to run one block alone.

Families differ only in where their blocks live (`BLOCK_PATHS`). Everything a block needs besides its
hidden states (causal or sliding-window mask, position ids, rotary embeddings) is recorded from the
model's own forward pass, per block, so Llama, OPT, Gemma 3 (with its per-layer local/global masks and
rotary tables) and their relatives all run through the same code. Recording per block, rather than
rebuilding the arguments ourselves, is what keeps newer models (which pass `position_embeddings`) from
breaking the way SparseGPT's Catcher did.
"""
from __future__ import annotations

import torch
from torch import nn

BLOCK_PATHS = ("model.layers", "model.decoder.layers", "model.language_model.layers", "transformer.h",
               "gpt_neox.layers")


def blocks(model) -> nn.ModuleList:
    """The decoder blocks g_0..g_{L-1} of a causal LM."""
    for path in BLOCK_PATHS:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__}: looked for {', '.join(BLOCK_PATHS)}. "
        "Add the attribute path of its nn.ModuleList of blocks to reconlib.arch.BLOCK_PATHS."
    )


def linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable layers of a block: every nn.Linear inside it (method.md §2), by qualified name."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def to(obj, device):
    """Move the tensors inside nested tuples / lists / dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to(v, device) for k, v in obj.items()}
    return obj


def run_block(block: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """g_i(w; x): hidden states (B, T, d) in, hidden states (B, T, d) out."""
    out = block(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for block i during capture: records its inputs instead of running it."""

    def __init__(self, inner: nn.Module, i: int, last: bool, sink: dict):
        super().__init__()
        self.inner, self.i, self.last, self.sink = inner, i, last, sink

    def __getattr__(self, name):  # models may read attributes such as `attention_type` off their blocks
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise TypeError("reconlib expects decoder blocks to take everything but hidden_states by keyword")
        if self.i == 0:
            self.sink["x"] = hidden_states
        kwargs = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "past_key_value")}
        kwargs["use_cache"] = False
        self.sink.setdefault("kwargs", {})[self.i] = kwargs
        if self.last:
            raise _Stop
        return hidden_states


@torch.no_grad()
def capture(model, input_ids: torch.Tensor, batch_size: int = 8) -> tuple[torch.Tensor, list[dict]]:
    """Block-0 inputs for every sequence, and each block's keyword arguments.

    input_ids: (N, T). Returns x_0 (N, T, d) on CPU in fp32, and a list of L kwargs dicts recorded for a
    batch of one sequence of length T; their tensors broadcast over any batch of unpadded sequences.
    Only the embedding path runs: the blocks are swapped for recorders and the lm_head is never reached.
    """
    layers = blocks(model)
    sink: dict = {}
    original = list(layers)
    device = next(model.parameters()).device
    for i, block in enumerate(original):
        layers[i] = _Recorder(block, i, i == len(original) - 1, sink)
    xs = []
    try:
        for start in [-1, *range(0, input_ids.shape[0], batch_size)]:
            # start = -1: one sequence alone, to record kwargs shaped for broadcasting
            batch = input_ids[:1] if start < 0 else input_ids[start:start + batch_size]
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                pass
            if start < 0:
                kwargs = [to(sink["kwargs"][i], "cpu") for i in range(len(original))]
            else:
                xs.append(sink["x"].float().cpu())
    finally:
        for i, block in enumerate(original):
            layers[i] = block
    return torch.cat(xs), kwargs
