"""The structural guard: no weight matrix is left dense without saying so.

Before any work, `refuse` sorts every matrix (parameter with ndim ≥ 2) inside the blocks into those reconlib
prunes (arch.matrices) and those it keeps dense on purpose (the router); anything else refuses the model,
naming its family. After each block is final, `check` counts the zeros of every such parameter itself,
slice by slice, and stops the run on one that is not at the asked sparsity. A mixture-of-experts model whose
experts the adapter did not see (fused 3-D parameters, not nn.Linear) once finished "at sparsity 0.5" with
17% of its block weights zero; this is what stops that.
"""
from __future__ import annotations

from torch import nn

from . import arch, moe

OUTSIDE = "outside the decoder blocks, never pruned (method.md §2)"


class Unsupported(ValueError):
    """The model holds weights reconlib cannot prune; raised before any work."""


class DenseLeft(ValueError):
    """A matrix inside the blocks was left dense without being on the list of what is kept dense."""


def kept_in_block(block: nn.Module) -> dict[str, str]:
    """Parameter name (inside the block) → why it stays dense: routers, norms, biases."""
    owners = dict(block.named_modules())
    routers = moe.routers(block)
    kept = {}
    for name, p in block.named_parameters():
        owner = name.rpartition(".")[0]
        if owner in routers:
            kept[name] = ("router: picks each token's experts; kept dense so that pruning cannot change which "
                          "expert a token reaches (trained with its block from BR on)")
        elif p.ndim < 2:
            kind = "bias" if name.endswith("bias") else "norm scale" if "norm" in type(owners[owner]).__name__.lower() \
                else "vector"
            kept[name] = f"{kind} (1-D, not a matrix)"
    return kept


def dense_kept(model) -> dict[str, str]:
    """What the record lists as left dense, and why: every parameter of the model that is not pruned, with the
    block index written `*` (the same in every block)."""
    layers = arch.blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    kept = {}
    for block in layers:
        kept |= {f"{prefix}.*.{name}": why for name, why in kept_in_block(block).items()}
    head = model.get_output_embeddings()
    owners = dict(model.named_modules())
    for name, p in model.named_parameters():
        if name.startswith(prefix + "."):
            continue
        owner = owners[name.rpartition(".")[0]]
        kind = "lm_head" if owner is head else "embedding" if isinstance(owner, nn.Embedding) or "Embedding" in \
            type(owner).__name__ else "norm" if "norm" in type(owner).__name__.lower() else "parameter"
        kept[name] = f"{kind}: {OUTSIDE}"
    return kept


def refuse(model) -> dict[str, str]:
    """The model's `dense_kept`, or Unsupported when a block holds a matrix that is neither pruned nor kept."""
    family = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    for i, block in enumerate(arch.blocks(model)):
        covered = {id(m.param) for m in arch.matrices(block).values()}
        kept = kept_in_block(block)
        odd = [(name, p) for name, p in block.named_parameters()
               if p.ndim >= 2 and id(p) not in covered and name not in kept]
        if odd:
            owners = dict(block.named_modules())
            what = ", ".join(f"{n} {tuple(p.shape)} in {type(owners[n.rpartition('.')[0]]).__name__}" for n, p in odd)
            why = [problem[0].upper() + problem[1:] for m in moe.experts(block).values()
                   if (problem := moe.layout_problem(m))]
            raise Unsupported(
                f"cannot prune {family} ({type(model).__name__}): block {i} holds weight matrices reconlib cannot "
                f"read: {what}. {'; '.join(why) + '. ' if why else ''}reconlib prunes nn.Linear, transformers' "
                "Conv1D and fused experts (gate_up_proj (E, 2·I, d), down_proj (E, d, I)); nothing was pruned. "
                "Use a model of a family listed under 'Supported models' in the README, or teach "
                "reconlib.arch.matrices (and moe.py, for experts) to view these parameters as (d_out, d_in) matrices.")
    return dense_kept(model)


def check(i: int, block: nn.Module, pattern: tuple[float, int, int]) -> None:
    """Every matrix of block i, counted from the parameter itself, is at the asked sparsity or kept on purpose.

    At the asked sparsity: every 2-D slice (an expert's matrix, for a 3-D parameter) has at least
    ratio · size zeros under N:M (every group of M holds M − N), and under an unstructured ratio at least
    ratio · size − max(rows, cols): Wanda prunes ⌊ratio · cols⌋ per row, Conv1D stores the matrix transposed.
    """
    ratio, _, group = pattern
    kept = kept_in_block(block)
    short = []
    for name, p in block.named_parameters():
        if p.ndim < 2 or name in kept:
            continue
        slices = p.detach().reshape(-1, *p.shape[-2:])  # (experts or 1, rows, cols)
        zeros = (slices == 0).sum((1, 2))
        rows, cols = p.shape[-2:]
        need = int(ratio * rows * cols) - (0 if group else max(rows, cols))
        bad = (zeros < need).nonzero().flatten().tolist()
        if bad and p.ndim == 2:
            short.append(f"{name} ({zeros[0].item() / (rows * cols):.1%} zeros)")
        elif bad:  # one entry per fused parameter: a 128-expert layer would otherwise fill a screen
            shown = ", ".join(map(str, bad[:4])) + (", …" if len(bad) > 4 else "")
            short.append(f"{name}[{shown}] ({len(bad)} of {len(zeros)} experts, "
                         f"{zeros[bad].max().item() / (rows * cols):.1%} zeros at most)")
    if short:
        raise DenseLeft(
            f"block {i}: {', '.join(short)}: asked {ratio:.0%}, and not on the list of what is kept dense "
            f"(dense_kept): reconlib's pruning missed {'it' if len(short) == 1 else 'them'}. The run is stopped "
            "so that no record or saved model claims a sparsity it does not have; this is a bug in "
            "reconlib.arch.matrices or moe.py: report it with the model's config.")
