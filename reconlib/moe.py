"""Mixture-of-experts layers as transformers 5 stores them: a layer's experts fused into two 3-D parameters,
`experts.gate_up_proj` (E, 2·I, d) and `experts.down_proj` (E, d, I), beside a router `gate` that sends each
token to its top-k experts (Qwen3-MoE, Mixtral and their relatives).

Each expert's two matrices are pruned like any other matrix, through views into the fused parameters
(arch.Matrix), so the saved model is the same transformers checkpoint with zeros in it. Their statistics
come from the tokens the router sends to that expert, and only those: a pre-hook on the experts module reads
the routing (top_k_index) that the model itself computed and rebuilds each expert's two inputs from it. The
router stays dense (guard.py lists it): it is small, and pruning it would change which expert a token reaches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# the layout moe.py reads; transformers' use_experts_implementation records it on every experts module
PLAIN = {"is_transposed": False, "has_bias": False, "is_concatenated": True, "has_gate": True,
         "has_post_expert_norm": False}


def experts(block: nn.Module) -> dict[str, nn.Module]:
    """name → experts module: every module of the block holding a fused 3-D `gate_up_proj`."""
    return {name: m for name, m in block.named_modules()
            if isinstance(getattr(m, "gate_up_proj", None), nn.Parameter) and m.gate_up_proj.ndim == 3}


def layout_problem(m: nn.Module) -> str | None:
    """Why moe.py cannot read this experts module (None when it can)."""
    odd = [f"{k}={getattr(m, k)}" for k, plain in PLAIN.items() if getattr(m, k, plain) != plain]
    if not isinstance(getattr(m, "down_proj", None), nn.Parameter) or m.down_proj.ndim != 3:
        odd.append("no fused 3-D down_proj")
    if odd:
        return (f"its experts ({type(m).__name__}) are stored as {', '.join(odd)}, and reconlib reads only "
                "gate_up_proj (E, 2·I, d) and down_proj (E, d, I), concatenated gate;up, without biases")
    return None


def routers(block: nn.Module) -> dict[str, nn.Module]:
    """name → router: the `gate` (or `router`) beside each experts module."""
    out = {}
    for name in experts(block):
        parent = name.rpartition(".")[0]
        for attr in ("gate", "router"):
            path = f"{parent}.{attr}" if parent else attr
            try:
                out[path] = block.get_submodule(path)
            except AttributeError:
                continue
    return out


def matrices(block: nn.Module) -> dict:
    """`{experts}.gate_up_proj.e` and `{experts}.down_proj.e` for every expert e: arch.Matrix views, each
    (d_out, d_in) as nn.Linear stores it (experts call F.linear(x, gate_up_proj[e]))."""
    from .arch import Matrix

    out = {}
    for name, m in experts(block).items():
        if layout_problem(m):
            continue  # left uncovered: guard.refuse names it, before any work
        for attr in ("gate_up_proj", "down_proj"):
            param = getattr(m, attr)
            for e in range(param.shape[0]):
                out[f"{name}.{attr}.{e}"] = Matrix(param, None, f"{name}.{attr}", expert=e)
    return out


class RoutedInputs:
    """Feeds criteria.Stats each expert's inputs, from the tokens routed to it, during the block's forward.

    gate_up_proj[e] sees the hidden states of the tokens whose top-k includes e; down_proj[e] sees
    act(gate) ⊙ up of those tokens, computed with gate_up_proj[e] as it is at that moment (pruned already,
    under `sequential`). An expert that no token reaches gets no statistics at all: choose_masks sees the
    missing entry and prunes it by magnitude, and says so.
    """

    def __init__(self, block: nn.Module, stats):
        self.stats = stats
        self._handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True)
                         for name, m in experts(block).items() if not layout_problem(m)]

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            x = x.detach().reshape(-1, x.shape[-1])                # (tokens, d)
            routed = top_k_index.reshape(x.shape[0], -1)           # (tokens, k)
            for e in range(module.gate_up_proj.shape[0]):
                rows = (routed == e).any(-1).nonzero().squeeze(-1)
                if len(rows) == 0:
                    continue
                X = x[rows]                                        # (tokens routed to e, d)
                self.stats.add(f"{name}.gate_up_proj.{e}", X)
                with torch.no_grad():
                    H = _gate(module, F.linear(X, module.gate_up_proj[e]))  # (tokens routed to e, I)
                self.stats.add(f"{name}.down_proj.{e}", H)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _gate(module: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """act(gate) ⊙ up, as the experts module computes it (transformers 5 gives it `_apply_gate`)."""
    if hasattr(module, "_apply_gate"):
        return module._apply_gate(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return module.act_fn(gate) * up
