"""The one architecture adapter: blocks g_0..g_{L-1}, block-0 inputs, how to run one block alone, and the
prunable matrices of a block.

Families differ only in where their blocks live (`BLOCK_PATHS`). Everything a block needs besides its
hidden states (causal or sliding-window mask, position ids, rotary embeddings; by keyword, or positionally as
GPT-2 passes them) is recorded from the model's own forward pass, per block, so Llama, OPT, Gemma 3 (with
its per-layer local/global masks and rotary tables) and their relatives all run through the same code. Recording per block, rather than
rebuilding the arguments ourselves, is what keeps newer models (which pass `position_embeddings`) from
breaking the way SparseGPT's Catcher did.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

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
    """Every nn.Linear inside a block, by qualified name."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


@dataclass(frozen=True, eq=False)
class Matrix:
    """One prunable weight matrix W (d_out, d_in), oriented as nn.Linear stores it, inside a block parameter.

    `module` is what is hooked for W's inputs (None for an expert: moe.py gathers its routed tokens).
    `key` names the parameter in the record's layer_sparsity: the layer for nn.Linear / Conv1D, the fused
    parameter for experts (one entry per parameter, not per expert: a 128-expert model would flood it).
    """
    param: nn.Parameter
    module: nn.Module | None
    key: str
    expert: int | None = None
    transposed: bool = False  # Conv1D stores Wᵀ (d_in, d_out)

    @property
    def W(self) -> torch.Tensor:
        """A view of the parameter's storage: writing into it writes the model."""
        return self.view(self.param.data)

    def view(self, full: torch.Tensor) -> torch.Tensor:
        """The (d_out, d_in) view of this matrix inside a tensor shaped like the parameter (weights or a mask)."""
        t = full if self.expert is None else full[self.expert]
        return t.T if self.transposed else t


def matrices(block: nn.Module) -> dict[str, Matrix]:
    """The prunable matrices of a block (method.md §2): every nn.Linear, GPT-2's Conv1D (stored transposed),
    and each expert of a fused mixture-of-experts layer (moe.py). Names are qualified module names, with
    `.e` appended for expert e of a fused parameter."""
    from transformers.pytorch_utils import Conv1D

    from . import moe

    out, routers = {}, moe.routers(block)
    for name, m in block.named_modules():
        if isinstance(m, (nn.Linear, Conv1D)) and name not in routers:  # a router stays dense (moe.py)
            out[name] = Matrix(m.weight, m, name, transposed=isinstance(m, Conv1D))
    return out | moe.matrices(block)


def param_masks(block: nn.Module, masks: dict[str, torch.Tensor]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, mask shaped like it) for every pruned parameter of a block, from its per-matrix masks."""
    full = {}
    for name, mat in matrices(block).items():
        if name not in masks:
            continue
        m = full.setdefault(id(mat.param), (mat.param, torch.ones_like(mat.param, dtype=torch.bool)))[1]
        mat.view(m).copy_(masks[name])
    return list(full.values())


def sparsity(block: nn.Module) -> dict[str, tuple[int, int]]:
    """key → (zeros, size) of every prunable parameter of a block, counted from the parameter itself."""
    seen = {}
    for mat in matrices(block).values():
        if mat.key not in seen:
            seen[mat.key] = ((mat.param == 0).sum().item(), mat.param.numel())
    return seen


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
        if args:  # GPT-2 passes (cache, mask, encoder states) positionally: name them from the block's signature
            names = list(inspect.signature(self.inner.forward).parameters)[1:]
            kwargs = {**dict(zip(names, args)), **kwargs}
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
