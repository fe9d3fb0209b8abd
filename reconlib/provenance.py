"""What wrote a record: the library's code (its digest and git commit), the versions, and the machine whose kernels
decide the record's last bits; and each record's own digest, so an edited number no longer matches it."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

from .streams import ISA_VARIABLES


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of the library's own files (code and the paper's numbers): which code wrote a record, even
    where git is absent or the tree had uncommitted changes. Read once per process, when its first run starts
    (pipeline.compute), so a file edited while a long grid runs is not credited with records of the code that
    was loaded."""
    return digest_of(Path(__file__).parent)


def digest_of(package: Path) -> str:
    """source_digest of the reconlib package in folder `package` (another checkout's, too)."""
    h = hashlib.sha256()
    for f in sorted(package.glob("*.py")) + [package / "paper_numbers.csv"]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def code_of(record: dict) -> Path | None:
    """A checkout of the code that wrote `record`, for a recomputation that is to differ from it in one thing only
    (the kernels, verify.variants): None when this process's code is that code, else a git worktree of the
    record's commit under .grid/ (where `make records REV=…` keeps its own), made if absent."""
    if record.get("source_digest") in (None, source_digest()):
        return None
    root = Path(__file__).resolve().parent.parent
    commit = record.get("git_commit")
    tree = root / ".grid" / str(commit)
    if commit and not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=root, capture_output=True)
    if not commit or not tree.is_dir() or digest_of(tree / "reconlib") != record["source_digest"]:
        where = (f"commit {commit}, which `git worktree add .grid/{commit} {commit}` could not check out here "
                 f"with that digest (a commit made with uncommitted changes?)") if commit else "which names no commit"
        raise RuntimeError(f"record {record.get('key')} was written by code {record['source_digest']} ({where}): "
                           f"no checkout here can recompute it as it was written; `records verify` recomputes it "
                           f"with today's code instead")
    return tree


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def pin() -> None:
    """Read the code's digest and commit now (once per process): pipeline.compute calls this as a run starts."""
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


# ------------------------------------------------------------------ integrity
def _body_digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def seal(record: dict) -> dict:
    """Add the digest of the record's own content: an edited number no longer matches it."""
    return {**record, "digest": _body_digest(record)}


def unsealed(record: dict) -> bool:
    return record.get("digest") != _body_digest(record)


def numbers(value, where=""):
    """(path, number) for every number under value: 'block_error[29]', 'ppl.wikitext2', ..."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield where, float(value)
    elif isinstance(value, dict):
        for k in sorted(value):
            yield from numbers(value[k], f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{where}[{i}]")
