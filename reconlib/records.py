"""The store of run records: one JSON file per run, keyed by `RunConfig.key()`, written atomically.

`run(config)` reads the record when it exists and computes it otherwise (pipeline.py), so notebooks, sweeps and
the book share finished runs and an interrupted run leaves nothing that looks finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from . import atomic, models, pipeline
from .config import RunConfig
from .pipeline import dense_config
from .provenance import seal, unsealed  # noqa: F401 (seal: the store's integrity check, where readers look for it)


def results_dir() -> Path:
    return Path(os.environ.get("RECONLIB_RESULTS", "results"))


def path(config: RunConfig) -> Path:
    return results_dir() / f"{config.key()}{models.local_stamp(config.model)}.json"


def dense_path(config: RunConfig) -> Path:
    blob = json.dumps(dense_config(config), sort_keys=True)
    return results_dir() / f"dense-{hashlib.sha256(blob.encode()).hexdigest()[:16]}{models.local_stamp(config.model)}.json"


def write(file: Path, record: dict) -> None:
    """Atomically (atomic.py): a reader sees the old record or the whole new one, never half of it."""
    atomic.write(file, lambda part: Path(part).write_text(json.dumps(record, indent=1, sort_keys=True)))


class DamagedRecord(ValueError):
    """A record file that cannot be read or trusted. Its message is one line per file: the file, what is wrong,
    and the way out (a record is recomputed from its config, or restored from git where it is committed)."""


def read(file: Path) -> dict | None:
    """The record in `file`, or None where there is none; a damaged one raises DamagedRecord, never a bare
    JSON error: not valid JSON (cut short, git conflict markers) or a digest that no longer matches."""
    if not file.is_file():
        return None
    text = file.read_text(errors="replace")
    try:
        record = json.loads(text)
    except ValueError as e:
        raise DamagedRecord(_damage(file, text, e)) from None
    if not isinstance(record, dict):
        raise DamagedRecord(f"record {file.name} is not a record (a JSON object): {_fix(file)}")
    if "digest" in record and unsealed(record):
        raise DamagedRecord(f"record {file.name} was changed after it was written (its digest no longer matches): "
                            f"{_fix(file)}")
    return record


def _damage(file: Path, text: str, error: ValueError) -> str:
    if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in text.splitlines()):
        return (f"record {file.name} holds git conflict markers: keep one side (git checkout --ours -- {file}, or "
                f"--theirs), or delete it to recompute it")
    return f"record {file.name} is not valid JSON ({error}; cut short, or edited by hand?): {_fix(file)}"


def _fix(file: Path) -> str:
    return f"delete it to recompute it, or restore it from git (git checkout -- {file})"


def read_all(files) -> dict[Path, dict]:
    """Every file's record; raises DamagedRecord with a line for each damaged one, not only the first."""
    found, damaged = {}, []
    for f in files:
        try:
            found[f] = read(f)
        except DamagedRecord as e:
            damaged.append(str(e))
    if damaged:
        raise DamagedRecord("\n".join(damaged))
    return found


def stored(config: RunConfig) -> dict | None:
    """The run's record if the store has it (or a substitute, see `substituted`), without computing it."""
    return _substitutes.get(config.key()) or read(path(config))


def dense(config: RunConfig) -> dict:
    """Perplexity (and zero-shot accuracy) of the unpruned model under the config's evaluation settings."""
    file = dense_path(config)
    if (record := read(file)) is not None:
        return record
    record = pipeline.compute_dense(config)
    write(file, record)
    return record


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
    fresh = pipeline.compute(config, progress, out, low_memory)
    if record is not None:
        from . import verify

        # on other kernels (or thread counts) the numbers differ by rounding, which `records verify` judges
        if verify.same_kernels(record, fresh) and (bad := verify.judge(record, fresh, None)["failures"]):
            raise ValueError(f"record {file.name} does not reproduce on the machine that wrote it: " + "; ".join(bad[:5]))
        return record
    write(file, fresh)
    return fresh


# ------------------------------------------------------------------ integrity
RESULT_FIELDS = ("sparsity", "block_error", "block_error_from1", "test_block_error", "holdout_block_error", "unit_curves",
                 "ppl", "ppl_windows", "zeroshot")


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
    files = [f for f in sorted(folder.glob("*.json")) if f.name.startswith("dense-") == dense] if folder.is_dir() else []
    return list(read_all(files).values())
