"""Does the store reproduce here? `records verify` (the cheapest records, every `make book`) and
`records audit` (one record of each code version in the store).

A recomputed record falls in one of three cases, and the report names which:

1. **edited**: its digest no longer matches its content. Fails.
2. **same kernels**: recomputed on a machine whose CPU, vector ISA, BLAS, oneDNN and library versions are the
   record's, at the record's thread count (`at_threads`): every number must agree to SAME_KERNELS (measured: such
   a machine reproduces a record bit for bit). A record of other kernels (or older than its machine fingerprint) that agrees all the same is
   **same numbers**.
3. **other kernels**: any other difference is judged against a band measured here, on this very run. The
   record is computed again in subprocesses whose kernels take other code paths (`variants()`), and the
   band of each field is SPREAD times the largest relative difference a variant makes in it, at least FLOOR.
   Kernel rounding is amplified with depth by SmolLM2's massive activations and flips the odd near-tied mask
   entry, so another CPU's numbers differ by up to ~1.7%; a changed method moves them by more.

Whatever the case, no verdict that reads the record may change (holds, does not hold, not separable) when the
recomputed record replaces the stored one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import atomic, models, pipeline, provenance, records
from .config import from_dict

SAME_KERNELS = 1e-9  # relative; the same machine and versions give bit-equal numbers (measured: 0.0)
FLOOR = 1e-5         # relative; the band's least width, for numbers no variant moves
# The other machine of issue #20 gave SmolLM2 Wanda LR seed 2 (9f85eecf83d4af06) a final error of 391.232 against
# the stored 394.172, the worst number 1.7% off: MKL_CBWR=COMPATIBLE reproduces those numbers here to every digit,
# so that machine's MKL took the compatible code path where this one takes its AVX2 path. A reader's machine
# takes one of MKL's paths; the two variants below make the other one's difference whichever it took, and
# SPREAD leaves room for a path neither takes (measured ratio, stored vs variant on the other machine: 1.0).
VARIANTS = ({"MKL_CBWR": "COMPATIBLE"}, {"MKL_CBWR": "AVX2"})
SPREAD = 3.0
# and torch's own kernels one ISA lower, with or without MKL
ATEN_LOWER = {"AVX512": "avx2", "AVX2": "default"}
FINGERPRINT = ("cpu_model", "cpu_capability", "blas", "onednn", "isa_variables", "gpu")


def kernels(record: dict) -> dict | None:
    """What decides a record's last bits, or None for a record written before machines were named precisely."""
    machine = record.get("machine", {})
    if "cpu_capability" not in machine:
        return None
    return {**{k: machine.get(k) for k in FINGERPRINT}, **record.get("versions", {})}


def writers_threads(record: dict) -> int | None:
    """The thread count that computed the record, or None for a record that does not say (recomputed at this
    process's own, as before)."""
    return record.get("machine", {}).get("threads")


# A record is recomputed at the thread count that wrote it, rather than the count being one more thing that
# makes kernels "other": a reduction split over 2 threads adds in another order than over 1 (Gemma 3's cross-block
# records move 5-12% between them), and no variant below measures that, so a band could not cover it, while one
# machine at the writer's count reproduces every bit. `make records` (1 thread a run) then verifies bit-tight
# under `make book` at any count.
@contextlib.contextmanager
def at_threads(n: int | None):
    """torch (and MKL, which it tells) at `n` threads within the block; None leaves the count alone."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def same_kernels(a: dict, b: dict) -> bool:
    """Whether two records were computed by the same kernels, their thread counts too where both name one:
    only then must every number agree bit for bit."""
    threads = writers_threads(a), writers_threads(b)
    return kernels(a) == kernels(b) and (None in threads or threads[0] == threads[1])


def variants() -> list[dict]:
    """The environments of the band's recomputations: MKL's other code paths (where torch uses MKL) and torch's own
    kernels one ISA lower. A reader's CPU can differ from the writer's in either: an AVX2-only CPU took both
    (measured: 2.4e-4 on 9f85eecf's block_error[29], against a band of 1.1e-4 from MKL's paths alone)."""
    import torch

    machine = provenance.machine()
    # MKL_CBWR naming this CPU's own ISA is MKL's native path here (measured on an AVX2 EPYC: bit-equal to no
    # variable at all), so it would recompute the record for a difference of zero: an hour a cross-block run
    mkl = [dict(v) for v in VARIANTS if v["MKL_CBWR"] != machine["cpu_capability"]] \
        if "Math Kernel Library" in machine["blas"] else []
    lower = ATEN_LOWER.get(torch.backends.cpu.get_cpu_capability())
    return mkl + ([{"ATEN_CPU_CAPABILITY": lower}] if lower else [])


def recompute_under(config: dict, env: dict, threads: int | None = None, code: Path | None = None,
                    progress: bool = False) -> dict:
    """The record of `config` computed in a subprocess with `env` on top of this one's (at `threads`, if given;
    by the reconlib in checkout `code`, if given: provenance.code_of), in a cache of its own (variant_cache), so
    that a kill resumes it. `progress`: its bars go to this process's stderr (a Gemma 3 run takes hours)."""
    env = {**env, **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
           **({"PYTHONPATH": str(code)} if code else {})}
    env["RECONLIB_CACHE"] = str(variant_cache(env))
    with tempfile.TemporaryDirectory(prefix="reconlib-variant-") as tmp:
        out = Path(tmp) / "record.json"
        script = ("import json, sys; from reconlib import pipeline; from reconlib.config import from_dict; "
                  f"r = pipeline.compute(from_dict(json.loads(sys.argv[1])), progress={progress}, resumable=True); "
                  "open(sys.argv[2], 'w').write(json.dumps(r))")
        # `python -c` puts its working directory first on the path, ahead of PYTHONPATH: run in the checkout
        done = subprocess.run([sys.executable, "-c", script, json.dumps(config), str(out)], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE, text=True,
                              cwd=code)
        if done.returncode or not out.is_file():
            raise RuntimeError(f"the recomputation under {env} failed:\n"
                               + (done.stderr[-2000:] if done.stderr else "(its output is above)"))
        return json.loads(out.read_text())


def variant_cache(env: dict) -> Path:
    """The cache a recomputation under `env` (its kernels, threads and code) keeps its own: a run's checkpoint is
    named by its config alone, and one written under other kernels is deleted on sight, so a shared one would
    neither resume nor survive two variants side by side; self-generated text is cached by config alone too, and
    must come from the variant's own kernels. The model files and the dense streams (whose keys name their
    kernels and threads) are the shared cache's."""
    shared = models.cache_dir()
    root = shared / "variants" / hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:16]
    root.mkdir(parents=True, exist_ok=True)
    for name in ("gguf", "models", "dense"):
        (shared / name).mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made by a variant beside this one
            (root / name).symlink_to(shared / name, target_is_directory=True)
    return root


def _field(path: str) -> str:
    """'block_error[11]' → 'block_error', 'ppl_windows.ptb[3]' → 'ppl_windows.ptb': a band per field."""
    return re.sub(r"\[\d+\]", "", path)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def judge(stored: dict, fresh: dict, others: list[dict] | None = None) -> dict:
    """One recomputed record against its stored self. `others`: the variants' recomputations (case 3), whose
    differences from `fresh` give the band; None: the same kernels (case 2).
    → {case, numbers, worst (largest relative difference), band (there), worst_number, failures: [text]}."""
    a = dict(provenance.numbers({k: stored.get(k) for k in records.RESULT_FIELDS}))
    b = dict(provenance.numbers({k: fresh.get(k) for k in records.RESULT_FIELDS}))
    failures = [f"{k}: only in one record" for k in sorted(set(a) ^ set(b))]
    band = {}
    for other in others or []:
        c = dict(provenance.numbers({k: other.get(k) for k in records.RESULT_FIELDS}))
        for k in set(b) & set(c):
            band[_field(k)] = max(band.get(_field(k), FLOOR), SPREAD * _relative(b[k], c[k]))
    judged = {}  # number → (relative difference, its band)
    for k in sorted(set(a) & set(b)):
        judged[k] = _relative(a[k], b[k]), band.get(_field(k), FLOOR) if others is not None else SAME_KERNELS
        if judged[k][0] > judged[k][1]:
            failures.append(f"{k}: stored {a[k]:.6g}, recomputed {b[k]:.6g} (relative {judged[k][0]:.2g}, "
                            f"band {judged[k][1]:.2g})")
    worst = max(judged, key=lambda k: judged[k][0], default=None)
    return {"case": "other kernels" if others is not None else "same kernels", "numbers": len(b),
            "worst": judged[worst][0] if worst else 0.0, "band": judged[worst][1] if worst else SAME_KERNELS,
            "worst_number": worst, "failures": failures}


def flipped_verdicts(fresh: dict, profile: str) -> list[str] | None:
    """Parts of the findings (and findings) whose verdict changes when `fresh` replaces the stored record; None when the record is not one the profile's findings read, or the model's store is incomplete."""
    from . import findings, grid, stopping

    model = fresh["config"]["model"]
    if model not in grid.grid(profile).models or fresh["key"] not in {c.key() for c in grid.runs(profile)}:
        return None
    if any(c.model == model for _, c in grid.missing(profile)):
        return None
    before = findings.words(stopping.every_verdict(profile, model))
    with records.substituted(fresh):
        after = findings.words(stopping.every_verdict(profile, model))
    return changed(before, after)


def changed(before: dict, after: dict) -> list[str]:
    """Every (finding, part) whose word differs, holds ↔ not separable too: a verdict that one record's rounding
    moves is not one to quote."""
    return [f"{part}: {before[part]} → {after.get(part)}" for part in before if before[part] != after.get(part)]


def check(file: Path, stored: dict, profile: str, progress: bool = False) -> dict:
    """Recompute one stored record here and judge it (cases 2 and 3, and the verdicts that read it)."""
    started = time.perf_counter()
    threads = writers_threads(stored)
    with at_threads(threads):
        fresh = pipeline.compute(from_dict(stored["config"]), progress=progress, resumable=False)
    here = provenance.environment()
    row = judge(stored, fresh)
    envs = []
    if kernels(stored) != kernels(here) and row["failures"]:
        envs = variants()
        row = judge(stored, fresh, [recompute_under(stored["config"], env, threads) for env in envs])
    elif kernels(stored) != kernels(here):  # other or unnamed kernels, and yet every bit agrees: no band needed
        row["case"] = "same numbers"
    row |= {"record": file.name, "config": stored["config"], "seconds": time.perf_counter() - started,
            "stored_final_error": stored.get("final_error"), "final_error": fresh.get("final_error"),
            "stored_seconds": stored["seconds"]["total"],
            "stored_machine": stored["machine"], "machine": fresh["machine"], "variants": envs,
            "source_digest": stored.get("source_digest"), "flipped": flipped_verdicts(fresh, profile)}
    return row


def _load() -> dict[Path, dict]:
    """Every pruning record of the store, after refusing the store if any file is damaged (case 1: edited, or
    not valid JSON), with a line naming each one."""
    folder = records.results_dir()
    stored = records.read_all(sorted(folder.glob("*.json"))) if folder.is_dir() else {}
    return {f: r for f, r in stored.items() if not f.name.startswith("dense-")}


def _raise_on_failure(rows: list[dict]) -> None:
    for r in rows:
        if r["failures"] or r["flipped"]:
            why = "; ".join(r["failures"][:5] + [f"verdict changes: {f}" for f in r["flipped"] or []])
            raise ValueError(f"record {r['record']} does not reproduce ({r['case']}): {why}")


def _cheapest_first(stored: dict[Path, dict]) -> list[Path]:
    return sorted(stored, key=lambda f: (stored[f]["seconds"]["total"], f.name))


def _recomputing(f: Path, record: dict) -> str:
    """The bar's label while a record is recomputed: a recompute takes minutes and says nothing until it ends."""
    return f"recomputing {f.name} (stored {record['seconds']['total'] / 60:.0f} min)"


def verify(sample: int = 2, profile: str = "cpu", progress: bool = False) -> list[dict]:
    """Check every record's digest, then recompute the `sample` cheapest pruning records here and judge each.
    Raises ValueError naming the first record that fails."""
    from tqdm.auto import tqdm

    stored = _load()
    rows = []
    bar = tqdm(_cheapest_first(stored)[:sample], desc="verify", unit="record", disable=not progress)
    for f in bar:
        bar.set_postfix_str(_recomputing(f, stored[f]))
        rows.append(check(f, stored[f], profile))
    _raise_on_failure(rows)
    return rows


def audit(profile: str = "cpu", progress: bool = False) -> list[dict]:
    """One record of each code version (`source_digest`) in the store, the cheapest of each, recomputed with
    today's code and judged by the same rule. Reports, and never raises on a difference: its page shows them.
    Each row is kept as it lands, under the cache and keyed by today's code and kernels and the record's digest,
    so an audit that is killed (it takes an hour or more) resumes at the row it stopped in."""
    from tqdm.auto import tqdm

    stored = _load()
    versions = {}
    for f in _cheapest_first(stored):
        versions.setdefault(stored[f].get("source_digest"), f)
    here = provenance.environment()
    stamp = hashlib.sha256(json.dumps([here["source_digest"], kernels(here)], sort_keys=True).encode()).hexdigest()
    kept = models.cache_dir() / "audit" / stamp[:16]
    rows = []
    bar = tqdm(versions.values(), desc="audit: code versions", unit="version", disable=not progress)
    for f in bar:
        row_file = kept / f"{f.stem}-{stored[f].get('digest', 'unsealed')[:16]}.json"
        if not row_file.is_file():
            bar.set_postfix_str(_recomputing(f, stored[f]))
            row = check(f, stored[f], profile)
            atomic.write(row_file, lambda part: Path(part).write_text(json.dumps(row)))
        rows.append(json.loads(row_file.read_text()))
    return rows
