"""Reconstruction error (method.md §4) and perplexity (method.md §6)."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


def block_error(y_dense: torch.Tensor, y_sparse: torch.Tensor, chunk: int = 16) -> float:
    """Normalized error (1 / (N·T·d)) ‖g(w̄; x̄) − g(m ⊙ w; x)‖², both (N, T, d); chunked to bound memory."""
    total = 0.0
    for start in range(0, y_dense.shape[0], chunk):
        diff = y_dense[start:start + chunk] - y_sparse[start:start + chunk]
        total += diff.pow(2).sum(dtype=torch.float64).item()  # fp64 sum: ~1e7 terms per block
    return total / y_dense.numel()


def window_error(y_dense: torch.Tensor, y_sparse: torch.Tensor) -> list[float]:
    """block_error of each window (N, T, d) → N numbers, whose mean is block_error."""
    return [block_error(y_dense[n:n + 1], y_sparse[n:n + 1]) for n in range(y_dense.shape[0])]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own head on final hidden states (already normed by the base), as fp32 logits: what
    its CausalLM forward returns, with Gemma 2 / 3's final soft-capping tanh(z / c) · c when configured."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits.div_(cap).tanh_().mul_(cap) if cap is not None else logits


def _check_head(model, ids: torch.Tensor) -> None:
    """Refuse a family whose forward post-processes logits in a way `_logits` does not (Cohere's
    logit_scale, Granite's logits_scaling, …): one 8-token forward each way, rather than trust a list."""
    ids = ids[:1, :8]
    want = model(input_ids=ids, use_cache=False).logits.float()
    got = _logits(model, model.base_model(input_ids=ids, use_cache=False).last_hidden_state)
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item()):
        raise ValueError(f"{type(model).__name__}'s logits are not its output head on its base model's hidden "
                         "states (plus soft-capping): reconlib.evaluate.perplexity does not support it yet")


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log softmax(logits)[target] per position in fp64, overwriting logits: cross_entropy's log-softmax copy
    would double the chunk's memory, and its fp32 sum over a 262k vocabulary drifts by ~2e-5."""
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    top = logits.amax(1, keepdim=True)
    logsumexp = logits.sub_(top).exp_().sum(1).log_() + top.squeeze(1)
    return (logsumexp - picked).double()


def head_chunk(config, floats: int = 2**26) -> int:
    """Positions through the output head at a time: about `floats` fp32 logits (256 MB). Each chunk reads the
    whole head (Gemma 3's: 671 MB), so fewer positions spend their time streaming it: 64 MB of logits made Gemma
    3's windows 1.37x slower, with bit-equal NLLs (bench/ppl_chunk.py); SmolLM2's did not move."""
    return max(1, floats // config.vocab_size)


@torch.inference_mode()
def window_nll(model, windows: torch.Tensor, batch_size: int = 0, progress: bool = True,
               chunk: int = 0) -> list[float]:
    """Mean token NLL of each window (W, T) (method.md §6); the first token of each window is context only.
    Kept per window so that a run evaluated on a whole test set also gives the perplexity of its first K windows.

    The NLL goes through the output head `chunk` positions at a time (0: `head_chunk`'s), so
    memory does not grow with batch × T × vocabulary (Gemma's is 262k: 2 GB of logits per 2048-token window).
    batch_size 0 picks one that keeps a batch's activations (hidden states, attention scores) near 128 MB:
    on CPU larger batches are no faster at these lengths, and the weights already dominate memory.
    """
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(f"perplexity needs windows of shape (W, T) with W > 0, got {tuple(windows.shape)}")
    W, T = windows.shape
    c = model.config
    context = getattr(c, "max_position_embeddings", None)
    if context is not None and T > context:
        raise ValueError(f"windows of {T} tokens exceed the model's context of {context}: lower seq_len")
    if batch_size <= 0:  # floats per window: the attention scores (if materialized) plus a few MLP-wide tensors
        width = max(c.hidden_size, getattr(c, "intermediate_size", None) or getattr(c, "ffn_dim", 0))
        batch_size = max(1, 2**25 // (T * (c.num_attention_heads * T + 4 * width)))
    chunk = chunk or head_chunk(c)
    device = _device(model)
    _check_head(model, windows[:1].to(device))
    nll = torch.zeros(W, dtype=torch.float64, device=device)  # per window, on device: no sync per chunk
    bar = tqdm(range(0, W, batch_size), desc="perplexity", disable=not progress, leave=False)
    for start in bar:
        ids = windows[start:start + batch_size].to(device)
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1].flatten(0, 1)
        targets = ids[:, 1:].flatten()                      # (B·(T−1),)
        owner = start + torch.arange(len(targets), device=device) // (T - 1)  # the window of each position
        for i in range(0, len(targets), chunk):
            nll.index_add_(0, owner[i:i + chunk], _nll(_logits(model, hidden[i:i + chunk]), targets[i:i + chunk]))
        bar.set_postfix(ppl=f"{math.exp(nll[:start + len(ids)].sum().item() / ((start + len(ids)) * (T - 1))):.2f}")
    return (nll / (T - 1)).tolist()


def perplexity(model, windows: torch.Tensor, batch_size: int = 0, progress: bool = True, chunk: int = 0) -> float:
    """exp(mean token NLL) over windows (W, T) (method.md §6): every window has T − 1 scored tokens."""
    nll = window_nll(model, windows, batch_size, progress, chunk)
    return math.exp(math.fsum(nll) / len(nll))
