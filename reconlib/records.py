"""Run records: one JSON file per run, keyed by `RunConfig.key()`, written atomically.

`run(config)` loads the record when it exists and computes it otherwise, so notebooks, sweeps and the
book share finished runs and an interrupted run leaves nothing that looks finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import torch

from . import data, evaluate, lazy, models, reconstruct
from .config import RunConfig, from_dict
from .streams import ISA_VARIABLES

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


def _model_id(model: str) -> str:
    """What the model's weights are: an embedded model's converted folder is named by its GGUF's digest."""
    return Path(models.resolve(model)).name if model in models.EMBEDDED else model + _local_stamp(model)


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


def stored(config: RunConfig) -> dict | None:
    """The run's record if the store has it (or a substitute, see `substituted`), without computing it."""
    return _substitutes.get(config.key()) or read(path(config))


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of the library's own files (code and the paper's numbers): which code wrote a record, even
    where git is absent or the tree had uncommitted changes. Read once per process, at import (below), so
    a file edited while a long grid runs is not credited with records of the code that was loaded."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")) + [Path(__file__).with_name("paper_numbers.csv")]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


source_digest(), git_commit()


def environment() -> dict:
    import transformers

    commit = git_commit()
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "git_commit": commit, "source_digest": source_digest(),
        "machine": machine(),
    }


def machine() -> dict:
    """What decides a record's last bits: the CPU and the vector ISA torch's kernels dispatch to, the BLAS
    and oneDNN builds, the thread count (and any variable that switched the ISA). Two records that agree on
    all of it were computed by the same kernels."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("flags")), [])
    built = torch.__config__.show()
    blas = next((line.strip(" -") for line in built.splitlines() if "Math Kernel Library" in line or "OpenBLAS" in line),
                "BLAS_INFO=" + (built.split("BLAS_INFO=")[1].split(",")[0] if "BLAS_INFO=" in built else "unknown"))
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_model": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "amx": any(f.startswith("amx") for f in flags), "blas": blas,
            "bf16_units": [f for f in flags if f in ("amx_bf16", "avx512_bf16")],  # where bf16 matmuls are native
            "onednn": next((line.strip(" -") for line in built.splitlines() if "MKL-DNN" in line or "oneDNN" in line), None),
            "threads": torch.get_num_threads(),
            "isa_variables": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _read(file: str) -> str:
    try:
        return Path(file).read_text()
    except OSError:
        return ""


def _bos(model, tokenizer, config: RunConfig) -> int | None:
    """The BOS id every window starts with (Gemma), or None; refuses windows beyond the context."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context and config.seq_len > context:
        raise ValueError(f"seq_len {config.seq_len} exceeds the context of {config.model} ({context} tokens)")
    return tokenizer.bos_token_id if models.needs_bos(model) else None


def _evaluate(model, tokenizer, config: RunConfig, bos, device) -> tuple[dict, dict, dict, dict]:
    ppl, nll, zs, seconds = {}, {}, None, {}
    if not (config.ppl or config.zeroshot):  # nothing to evaluate (a --low-memory model has no blocks left)
        return ppl, nll, zs, seconds
    model.to(device)
    for name in config.ppl:
        start = time.perf_counter()
        windows = data.eval_windows(name, tokenizer, config.seq_len, bos, config.max_eval_windows)
        nll[name] = evaluate.window_nll(model, windows)
        ppl[name] = math.exp(math.fsum(nll[name]) / len(nll[name]))
        seconds[f"ppl_{name}"] = time.perf_counter() - start
    if config.zeroshot:
        from .zeroshot import zero_shot

        start = time.perf_counter()
        zs = zero_shot(model, tokenizer, list(config.zeroshot), limit=config.zeroshot_limit or None)
        seconds["zeroshot"] = time.perf_counter() - start
    return ppl, nll, zs, seconds


def dense(config: RunConfig) -> dict:
    """Perplexity (and zero-shot accuracy) of the unpruned model under the config's evaluation settings."""
    file = dense_path(config)
    if (record := read(file)) is not None:
        return record
    record = compute_dense(config)
    write(file, record)
    return record


def compute_dense(config: RunConfig) -> dict:
    started = time.perf_counter()
    model, tokenizer = models.load_model(config.model)
    loaded = time.perf_counter() - started
    bos = _bos(model, tokenizer, config)
    ppl, nll, zs, seconds = _evaluate(model, tokenizer, config, bos, reconstruct.device_of(config)[0])
    return seal({"config": {k: config.to_dict()[k] for k in DENSE_FIELDS}, "ppl": ppl, "ppl_windows": nll,
                 "zeroshot": zs, "seconds": {"load": loaded, **seconds}, **environment(),
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


def compute(config: RunConfig, progress: bool = True, out: str | Path | None = None, low_memory: bool = False,
            resumable: bool = True) -> dict:
    """Prune, reconstruct and evaluate one run → its record (not written). With `out`, also save the model.

    resumable: keep a checkpoint under the run's key, so the same call after a kill resumes. A check's
    recomputation says False: it must start from nothing, and may run beside another of the same key.

    low_memory: read each block from the model's safetensors only while it is processed and write it to `out`
    (or a temporary folder) as soon as it is final (lazy.py); the same record, at about one block's memory.
    Evaluation, if the config asks for any, then loads the pruned folder whole.
    """
    started = time.perf_counter()
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
    # one draw of n_calib + extra_real windows: its first n_calib are exactly the draw of n_calib alone, so the
    # extra real windows leave the masks (and the reported error) those of the n_calib windows
    real = data.calibration_set(config.calib, tokenizer, config.n_calib + config.extra_real, config.seq_len,
                                config.seed, bos) \
        if config.n_calib else torch.zeros(0, config.seq_len, dtype=torch.long)  # magnitude LR from weights alone
    calib, extra = real[:config.n_calib], real[config.n_calib:]
    test = {name: data.eval_windows(name, tokenizer, config.seq_len, bos, config.n_test) for name in config.test_error}
    if config.self_gen:
        from .selfgen import self_generated

        # texts twice the window, as the paper cuts 1024-token windows from texts of up to 2048 tokens
        extra = torch.cat([self_generated(model, tokenizer, config.self_gen, config.seq_len, seed=config.seed,
                                          text_len=2 * config.seq_len, model_name=config.model), extra])
    before = time.perf_counter()
    result = reconstruct.prune(model, config, calib, test, extra, progress=progress,
                               store=models.cache_dir() / "dense", model_id=_model_id(config.model),
                               checkpoint=None if blocks or not resumable
                               else models.cache_dir() / "checkpoints" / path(config).stem,
                               blocks=blocks)
    # result.seconds counts the pruning done before a kill too (its checkpoint keeps it): so does total
    resumed = result.seconds - (time.perf_counter() - before)
    if blocks is not None:
        blocks.finish(tokenizer)
        (folder / "reconlib_config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        if config.ppl or config.zeroshot:
            model, tokenizer = models.load_model(str(folder))
        if out is None:
            shutil.rmtree(folder)
    device = reconstruct.device_of(config)[0]
    ppl, nll, zs, seconds = _evaluate(model, tokenizer, config, bos, device)
    record = {
        "key": config.key(), "config": config.to_dict(), "calib_digest": config.calib_digest,
        "sparsity": result.sparsity, "layer_sparsity": result.layer_sparsity,
        "block_error": result.block_error, "final_error": result.final_error,
        "block_error_from1": result.block_error_from1,
        "test_block_error": result.test_block_error,
        "test_final_error": {k: v[-1] for k, v in result.test_block_error.items()},
        "unit_loss": result.unit_loss, "ppl": ppl, "ppl_windows": nll, "zeroshot": zs,
        "seconds": {"prune": result.seconds, **seconds, "total": time.perf_counter() - started + max(resumed, 0.0)},
        "peak_memory_mb": result.peak_memory_mb, **environment(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if config.self_gen:  # what the model wrote, for the page: the cache of texts may be on another machine
        record["self_gen_sample"] = tokenizer.decode(extra[0], skip_special_tokens=True)
    if out is not None and blocks is None:
        models.save_pruned(model.cpu(), tokenizer, out, config.to_dict())
    return seal(record)


def run(config: RunConfig, progress: bool = True, out: str | Path | None = None, low_memory: bool = False) -> dict:
    """The record of a pruning run: read when it exists, computed and written otherwise.

    With `out`, the pruned model is also saved there (an HF folder, see models.save_pruned). A recorded run
    whose folder is missing is computed again, since only the run holds the model; the stored record then
    stands, and the new numbers must agree with it (`check`), so a committed record is never overwritten.
    """
    if config.key() in _substitutes:
        return _substitutes[config.key()]
    file = path(config)
    record = read(file)
    if record is not None and (out is None or read(Path(out) / "reconlib_config.json") == config.to_dict()):
        return record
    fresh = compute(config, progress, out, low_memory)
    if record is not None:
        from . import verify

        # on other kernels the numbers differ by rounding, which `records verify` judges with its band
        if verify.kernels(record) == verify.kernels(fresh) and (bad := verify.judge(record, fresh, None)["failures"]):
            raise ValueError(f"record {file.name} does not reproduce on the machine that wrote it: " + "; ".join(bad[:5]))
        return record
    write(file, fresh)
    return fresh


# ------------------------------------------------------------------ integrity
RESULT_FIELDS = ("sparsity", "block_error", "block_error_from1", "test_block_error", "ppl", "ppl_windows", "zeroshot")


def _body_digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def seal(record: dict) -> dict:
    """Add the digest of the record's own content: an edited number no longer matches it."""
    return {**record, "digest": _body_digest(record)}


def unsealed(record: dict) -> bool:
    return record.get("digest") != _body_digest(record)


def _numbers(value, where=""):
    """(path, number) for every number under value: 'block_error[29]', 'ppl.wikitext2', ..."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield where, float(value)
    elif isinstance(value, dict):
        for k in sorted(value):
            yield from _numbers(value[k], f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{where}[{i}]")


_substitutes: dict[str, dict] = {}  # key → a record that `run` returns instead of the stored one


@contextlib.contextmanager
def substituted(record: dict):
    """Within the block, `run` returns `record` for its config: what would the findings say with it?"""
    _substitutes[record["key"]] = record
    try:
        yield
    finally:
        _substitutes.pop(record["key"], None)


def all_records(dense: bool = False) -> list[dict]:
    """Every finished pruning record in the results folder (`dense`: the dense models' records instead)."""
    folder = results_dir()
    return [json.loads(f.read_text()) for f in sorted(folder.glob("*.json")) if f.name.startswith("dense-") == dense] \
        if folder.is_dir() else []
