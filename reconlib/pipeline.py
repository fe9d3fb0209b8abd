"""The pipeline behind a record: load the model, draw the windows, prune and reconstruct (reconstruct.prune),
evaluate, and assemble the record with its provenance. Nothing here reads or writes the store (records.py)."""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import data, evaluate, guard, lazy, models, reconstruct
from .clock import Clock
from .config import RunConfig
from .provenance import environment, pin, seal

DENSE_FIELDS = ("model", "seq_len", "ppl", "max_eval_windows", "eval_len", "zeroshot", "zeroshot_limit", "device")


def dense_config(config: RunConfig) -> dict:
    """The fields of a dense record's config (and its key): eval_len left out at 0, as records before it were."""
    values = config.to_dict()
    return {k: values[k] for k in DENSE_FIELDS if not (k == "eval_len" and values[k] == 0)}


def _bos(model, tokenizer, config: RunConfig) -> int | None:
    """The BOS id every window starts with (Gemma), or None; refuses windows beyond the context."""
    context = getattr(model.config, "max_position_embeddings", None)
    for name in ("seq_len", "eval_len"):
        if context and getattr(config, name) > context:
            raise ValueError(f"{name} {getattr(config, name)} exceeds the context of {config.model} ({context} tokens): "
                             f"lower it to {context} or less")
    return tokenizer.bos_token_id if models.needs_bos(model) else None


def _evaluate(model, tokenizer, config: RunConfig, bos, device) -> tuple[dict, dict, dict, dict]:
    """→ (perplexity, its windows' NLLs, zero-shot accuracy, {phase: (wall, CPU) seconds})."""
    ppl, nll, zs, times = {}, {}, None, {}
    if not (config.ppl or config.zeroshot):  # nothing to evaluate (a --low-memory model has no blocks left)
        return ppl, nll, zs, times
    model.to(device)
    for name in config.ppl:
        clock = Clock()
        windows = data.eval_windows(name, tokenizer, config.eval_window, bos, config.max_eval_windows,
                                    spread=config.eval_len > 0)
        nll[name] = evaluate.window_nll(model, windows)
        ppl[name] = math.exp(math.fsum(nll[name]) / len(nll[name]))
        times[f"ppl_{name}"] = clock.read()
    if config.zeroshot:
        from .zeroshot import zero_shot

        clock = Clock()
        zs = zero_shot(model, tokenizer, list(config.zeroshot), limit=config.zeroshot_limit or None)
        times["zeroshot"] = clock.read()
    return ppl, nll, zs, times


def _seconds(times: dict, device) -> dict:
    """{phase: (wall, CPU)} → the record's "seconds" (wall) and, on a CPU, "cpu_seconds" (its time on cores of its
    own, clock.py; a GPU's work is not the process's CPU time)."""
    return {"seconds": {k: w for k, (w, _) in times.items()}} | \
        ({"cpu_seconds": {k: c for k, (_, c) in times.items()}} if device.type == "cpu" else {})


def compute_dense(config: RunConfig) -> dict:
    """The dense model's record: perplexity (and zero-shot accuracy) under the config's evaluation settings."""
    pin()
    clock = Clock()
    model, tokenizer = models.load_model(config.model)
    loaded = clock.read()
    bos = _bos(model, tokenizer, config)
    ppl, nll, zs, times = _evaluate(model, tokenizer, config, bos, config.placement[0])
    # the later protocol's: the scale that makes a block error comparable across models (no forward otherwise)
    scale = {name: output_mean_square(model, data.eval_windows(name, tokenizer, config.seq_len, bos, config.n_test,
                                                               spread=True)) for name in config.test_error} \
        if config.eval_len else None
    return seal({"config": dense_config(config), "ppl": ppl, "ppl_windows": nll,
                 **({"output_mean_square": scale} if scale is not None else {}),
                 "zeroshot": zs, **_seconds({"load": loaded, **times}, config.placement[0]),
                 **environment(),
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


@torch.inference_mode()
def output_mean_square(model, windows: torch.Tensor) -> float:
    """mean(x̄_L²) over the windows (W, T): the dense last block's output, the scale of the block error (method.md
    §4). Gemma 3's residual stream runs ~500× SmolLM2's in it, so an error over it reads on one scale for both."""
    from . import arch

    seen = []
    hook = arch.blocks(model)[-1].register_forward_hook(lambda m, args, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).double().pow(2).sum().item()))
    try:
        for start in range(0, len(windows), 8):
            model.base_model(input_ids=windows[start:start + 8].to(evaluate._device(model)), use_cache=False)
    finally:
        hook.remove()
    return math.fsum(seen) / (windows.numel() * model.config.hidden_size)


def compute(config: RunConfig, progress: bool = True, out: str | Path | None = None, low_memory: bool = False,
            resumable: bool = True) -> dict:
    """Prune, reconstruct and evaluate one run → its record (not written). With `out`, also save the model.

    resumable: keep a checkpoint under the run's key, so the same call after a kill resumes. A check's
    recomputation says False: it must start from nothing, and may run beside another of the same key.

    low_memory: read each block from the model's safetensors only while it is processed and write it to `out`
    (or a temporary folder) as soon as it is final (lazy.py); the same record, at about one block's memory.
    Evaluation, if the config asks for any, then loads the pruned folder whole.
    """
    pin()
    clock = Clock()
    blocks = None
    if low_memory:
        if config.self_gen:
            raise ValueError("self-generated calibration text needs the whole dense model in memory: drop "
                             "--low-memory or set self_gen to 0")
        folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="reconlib-pruned-"))
        model, tokenizer, blocks = lazy.load(config.model, folder)
    else:
        model, tokenizer = models.load_model(config.model)
    bos = _bos(model, tokenizer, config)
    guard.refuse(model)  # a model reconlib cannot prune is refused before any work (self-generation takes minutes)
    # one draw of n_calib + extra_real windows: its first n_calib are exactly the draw of n_calib alone, so the
    # extra real windows leave the masks (and the reported error) those of the n_calib windows; the held-out
    # windows come last, sharing no token with the trained ones
    trained = config.n_calib + config.extra_real
    real = data.calibration_set(config.calib, tokenizer, trained, config.seq_len, config.seed, bos, config.holdout) \
        if config.n_calib else torch.zeros(0, config.seq_len, dtype=torch.long)  # magnitude LR from weights alone
    calib, extra, holdout = real[:config.n_calib], real[config.n_calib:trained], real[trained:]
    test = {name: data.eval_windows(name, tokenizer, config.seq_len, bos, config.n_test, spread=config.eval_len > 0)
            for name in config.test_error}
    if config.self_gen:
        from .selfgen import self_generated

        # texts twice the window, as the paper cuts 1024-token windows from texts of up to 2048 tokens
        extra = torch.cat([self_generated(model, tokenizer, config.self_gen, config.seq_len, seed=config.seed,
                                          text_len=2 * config.seq_len, model_name=config.model), extra])
    before = clock.read()
    checkpoint = None if blocks or not resumable \
        else models.cache_dir() / "checkpoints" / (config.key() + models.local_stamp(config.model))
    result = reconstruct.prune(model, config, calib, test, extra, progress=progress,
                               store=models.cache_dir() / "dense", model_id=models.model_id(config.model),
                               checkpoint=checkpoint, blocks=blocks, holdout=holdout)
    # result's seconds count the pruning done before a kill too (its checkpoint keeps them): so does total
    pruned = (result.seconds, result.cpu_seconds)
    resumed = tuple(max(p - (now - b), 0.0) for p, now, b in zip(pruned, clock.read(), before))
    if blocks is not None:
        blocks.finish(tokenizer)
        (folder / "reconlib_config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        if config.ppl or config.zeroshot:
            model, tokenizer = models.load_model(str(folder))
        if out is None:
            shutil.rmtree(folder)
    device = config.placement[0]
    ppl, nll, zs, times = _evaluate(model, tokenizer, config, bos, device)
    timing = _seconds({"prune": pruned, **times, "total": tuple(now + r for now, r in zip(clock.read(), resumed))},
                      device)
    timing["seconds"] |= {"monitor": result.monitor_seconds} if config.holdout else {}
    record = {
        "key": config.key(), "config": config.to_dict(), "calib_digest": config.calib_digest,
        "sparsity": result.sparsity, "layer_sparsity": result.layer_sparsity, "block_sparsity": result.block_sparsity,
        "block_error": result.block_error, "final_error": result.final_error,
        "block_error_from1": result.block_error_from1,
        "test_block_error": result.test_block_error,
        "test_final_error": {k: v[-1] for k, v in result.test_block_error.items()},
        # per test window (the later protocol): which windows were drawn is part of a change's variance
        **({"test_error_windows": result.test_window_error} if config.eval_len else {}),
        "dense_kept": result.dense_kept,  # what is left dense on purpose, and why (guard.py)
        **({"unrouted_experts": result.unrouted_experts} if result.unrouted_experts else {}),
        "unit_loss": result.unit_loss, "ppl": ppl, "ppl_windows": nll, "zeroshot": zs,
        **timing,
        "peak_memory_mb": result.peak_memory_mb, **environment(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if config.holdout:  # each unit's train / held-out curve, and the error of the held-out windows block by block
        record |= {"holdout_block_error": result.holdout_block_error, "unit_curves": result.unit_curves}
    if config.allocation != "uniform":  # each block's outlier ratio and the sparsity it was given (owl.py)
        record["owl"] = result.owl
    if config.self_gen:  # what the model wrote, for the page: the cache of texts may be on another machine
        record["self_gen_sample"] = tokenizer.decode(extra[0], skip_special_tokens=True)
    if out is not None and blocks is None:
        models.save_pruned(model.cpu(), tokenizer, out, config.to_dict())
    if checkpoint:  # kept through the evaluation (reconstruct.prune), needed no more
        shutil.rmtree(checkpoint, ignore_errors=True)
    return seal(record)
