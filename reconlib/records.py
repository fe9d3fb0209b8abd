"""Run records: one JSON file per run, keyed by `RunConfig.key()`, written atomically.

`run(config)` loads the record when it exists and computes it otherwise, so notebooks, sweeps and the
book share finished runs and an interrupted run leaves nothing that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from . import data, evaluate, models, reconstruct
from .config import RunConfig

DENSE_FIELDS = ("model", "seq_len", "ppl", "max_eval_windows", "zeroshot", "zeroshot_limit", "device")


def results_dir() -> Path:
    return Path(os.environ.get("RECONLIB_RESULTS", "results"))


def _local_stamp(model: str) -> str:
    """'' for a model name or Hub id; for a local folder or file, a digest of its files' sizes and times,
    so that a model saved again under the same path (`prune --out pruned/` twice) is not read as the old one."""
    root = Path(model)
    if not root.exists():
        return ""
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    blob = json.dumps([(str(f.relative_to(root.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    return "-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


def path(config: RunConfig) -> Path:
    return results_dir() / f"{config.key()}{_local_stamp(config.model)}.json"


def dense_path(config: RunConfig) -> Path:
    blob = json.dumps({k: config.to_dict()[k] for k in DENSE_FIELDS}, sort_keys=True)
    return results_dir() / f"dense-{hashlib.sha256(blob.encode()).hexdigest()[:16]}{_local_stamp(config.model)}.json"


def write(file: Path, record: dict) -> None:
    """temp file + rename: a reader sees the old file or the whole new one, never half of it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(tmp, file)
    except BaseException:
        os.unlink(tmp)
        raise


def read(file: Path) -> dict | None:
    return json.loads(file.read_text()) if file.is_file() else None


def environment() -> dict:
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "git_commit": commit,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }


def _bos(model, tokenizer, config: RunConfig) -> int | None:
    """The BOS id every window starts with (Gemma), or None; refuses windows beyond the context."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context and config.seq_len > context:
        raise ValueError(f"seq_len {config.seq_len} exceeds the context of {config.model} ({context} tokens)")
    return tokenizer.bos_token_id if models.needs_bos(model) else None


def _evaluate(model, tokenizer, config: RunConfig, bos, device) -> tuple[dict, dict, dict]:
    model.to(device)
    ppl, zs, seconds = {}, None, {}
    for name in config.ppl:
        start = time.perf_counter()
        windows = data.eval_windows(name, tokenizer, config.seq_len, bos, config.max_eval_windows)
        ppl[name] = evaluate.perplexity(model, windows)
        seconds[f"ppl_{name}"] = time.perf_counter() - start
    if config.zeroshot:
        from .zeroshot import zero_shot

        start = time.perf_counter()
        zs = zero_shot(model, tokenizer, list(config.zeroshot), limit=config.zeroshot_limit or None)
        seconds["zeroshot"] = time.perf_counter() - start
    return ppl, zs, seconds


def dense(config: RunConfig) -> dict:
    """Perplexity (and zero-shot accuracy) of the unpruned model under the config's evaluation settings."""
    file = dense_path(config)
    if (record := read(file)) is not None:
        return record
    started = time.perf_counter()
    model, tokenizer = models.load_model(config.model)
    loaded = time.perf_counter() - started
    bos = _bos(model, tokenizer, config)
    ppl, zs, seconds = _evaluate(model, tokenizer, config, bos, reconstruct.device_of(config)[0])
    record = {"config": {k: config.to_dict()[k] for k in DENSE_FIELDS}, "ppl": ppl, "zeroshot": zs,
              "seconds": {"load": loaded, **seconds}, **environment(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write(file, record)
    return record


def run(config: RunConfig, progress: bool = True, out: str | Path | None = None) -> dict:
    """The record of a pruning run: loaded when it exists, computed and written otherwise.

    With `out`, the pruned model is also saved there (an HF folder, see models.save_pruned); a finished
    run whose folder is missing is computed again, since only the run holds the model.
    """
    file = path(config)
    saved = out is None or read(Path(out) / "reconlib_config.json") == config.to_dict()
    if saved and (record := read(file)) is not None:
        return record
    started = time.perf_counter()
    model, tokenizer = models.load_model(config.model)
    bos = _bos(model, tokenizer, config)
    calib = data.calibration_set(config.calib, tokenizer, config.n_calib, config.seq_len, config.seed, bos)
    test = {name: data.eval_windows(name, tokenizer, config.seq_len, bos, config.n_test) for name in config.test_error}
    extra = None
    if config.self_gen:
        from .selfgen import self_generated

        # texts twice the window, as the paper cuts 1024-token windows from texts of up to 2048 tokens
        extra = self_generated(model, tokenizer, config.self_gen, config.seq_len, seed=config.seed,
                               text_len=2 * config.seq_len, model_name=config.model)
    result = reconstruct.prune(model, config, calib, test, extra, progress=progress)
    device = reconstruct.device_of(config)[0]
    ppl, zs, seconds = _evaluate(model, tokenizer, config, bos, device)
    record = {
        "key": config.key(), "config": config.to_dict(),
        "sparsity": result.sparsity, "layer_sparsity": result.layer_sparsity,
        "block_error": result.block_error, "final_error": result.final_error,
        "test_block_error": result.test_block_error,
        "test_final_error": {k: v[-1] for k, v in result.test_block_error.items()},
        "unit_loss": result.unit_loss, "ppl": ppl, "zeroshot": zs,
        "seconds": {"prune": result.seconds, **seconds, "total": time.perf_counter() - started},
        "peak_memory_mb": result.peak_memory_mb, **environment(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if out is not None:
        models.save_pruned(model.cpu(), tokenizer, out, config.to_dict())
    write(file, record)
    return record


def all_records() -> list[dict]:
    """Every finished pruning record in the results folder."""
    folder = results_dir()
    return [json.loads(f.read_text()) for f in sorted(folder.glob("*.json")) if not f.name.startswith("dense-")] \
        if folder.is_dir() else []
